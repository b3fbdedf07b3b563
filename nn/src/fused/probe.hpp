#pragma once
// Private to nn/: the sequence driver's per-step values, recorded for check_fused_cell, and the
// owner of the rules (the layer's cell) kept alive with the graph.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/layers/cell.hpp"

namespace rw::nn::fused::detail {

template <class T>
struct SequenceProbe {
    std::vector<xt::xarray<T>> states_after;        // per state [T, B, width], after step t
    std::vector<xt::xarray<T>> grad_states_before;  // per state [T, B, width]: dL/d(state before step t)
    xt::xarray<T> grad_gates;                       // [T, B, G*H]: dL/d(gate pre-activations) at step t
};

// The layer-direction recomputed with the cell's generic ops: (x, initial states...) to
// (output, final states...), reading the cell's parameters itself. The fused op's rules beyond
// first order (double backward, forward mode) differentiate it (replay.hpp); run_sequence called
// directly has none.
template <class T>
using SequenceReplay = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>& inputs)>;

// run_sequence, recording into *probe when given (filled by the forward and by the backward);
// `owner` lives as long as the op's backward may run the rules; `segment` as run_sequence's
// recompute_segment (ignored while probing); `replay` as above (empty: no second order).
template <class T>
SequenceResult<T> run_sequence_probed(const CellRules<T>& rules, const Tensor<T>& input,
                                      const std::vector<Tensor<T>>& initial_state,
                                      const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name,
                                      std::shared_ptr<SequenceProbe<T>> probe, std::shared_ptr<const void> owner = nullptr,
                                      std::size_t segment = 0, SequenceReplay<T> replay = {});

}  // namespace rw::nn::fused::detail
