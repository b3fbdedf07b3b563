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
    // float32, zero initial state; the weights are copied from `layer`, layer 0. `inference`: the
    // forward_inference primitive alone (weights reordered once), and run() times one forward.
    OnednnRnnStep(nn::Recurrent<float>& layer, std::size_t steps, std::size_t batch, bool inference = false);
    ~OnednnRnnStep();
    OnednnRnnStep(const OnednnRnnStep&) = delete;
    OnednnRnnStep& operator=(const OnednnRnnStep&) = delete;

    void set_input(const float* x);  // [T, B, I]
    // One training step (or forward); returns {total ms, ms in the RNN primitives alone}.
    std::pair<double, double> run();
    const float* output() const;      // [T, B, D*H]
    const float* diff_input() const;  // [T, B, I]; training only

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rw::cli
