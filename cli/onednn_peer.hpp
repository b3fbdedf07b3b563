#pragma once
// oneDNN's own fused RNN primitives (lstm, lbr_gru for PyTorch's GRU formula, vanilla_rnn) as
// the peer that `rewind bench --peer onednn` times beside rewind: one training step (forward,
// backward with dL/doutput = 1, weight gradients back in PyTorch's layout) on the same weights
// and input as a rewind layer.

#include <memory>
#include <utility>

#include <rewind/nn/layers/recurrent.hpp>

namespace rw::cli {

class OnednnRnnStep {
public:
    // One layer (oneDNN's stacked layers need input_size == hidden_size), uni- or bidirectional,
    // float32, zero initial state; the weights are copied from `layer`, layer 0.
    OnednnRnnStep(nn::Recurrent<float>& layer, std::size_t steps, std::size_t batch);
    ~OnednnRnnStep();
    OnednnRnnStep(const OnednnRnnStep&) = delete;
    OnednnRnnStep& operator=(const OnednnRnnStep&) = delete;

    void set_input(const float* x);  // [T, B, I]
    // One training step; returns {total ms, ms in the RNN primitives alone}.
    std::pair<double, double> run();
    const float* output() const;      // [T, B, D*H]
    const float* diff_input() const;  // [T, B, I]

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rw::cli
