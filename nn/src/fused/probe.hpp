#pragma once
// Private to nn/: the sequence driver's per-step values, recorded for check_fused_cell, and the
// owner of the rules (the layer's cell) kept alive with the graph.

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

// run_sequence, recording into *probe when given (filled by the forward and by the backward);
// `owner` lives as long as the op's backward may run the rules; `segment` as run_sequence's
// recompute_segment (ignored while probing); `replay` as run_sequence's (cell_rules.hpp).
template <class T>
SequenceResult<T> run_sequence_probed(const CellRules<T>& rules, const Tensor<T>& input,
                                      const std::vector<Tensor<T>>& initial_state,
                                      const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name,
                                      std::shared_ptr<SequenceProbe<T>> probe, std::shared_ptr<const void> owner = nullptr,
                                      std::size_t segment = 0, SequenceReplay<T> replay = {});

}  // namespace rw::nn::fused::detail
