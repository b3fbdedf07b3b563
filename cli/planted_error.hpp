#pragma once
// `rewind gradcheck --plant-error S`: the check, checked. The layer is built as usual, except
// that its first cell (layer 0, forward direction) is wrapped so that the backward of step S
// scales the gradient reaching that step's new hidden state by 1.01: a wrong derivation that
// matters at one step only, written with the public custom-op API (record_op) as a user's would
// be. `--per-step` must then name step S, and the whole-tensor check fail.

#include <cstdint>
#include <memory>

#include <rewind/nn/layers/recurrent.hpp>

namespace rw::cli {

// The wrapped cell has no fused rules, so the layer runs step() on either path.
std::shared_ptr<nn::Recurrent<double>> make_layer_with_planted_error(const std::string& cell,
                                                                     const nn::RecurrentOptions& options,
                                                                     std::size_t step);

}  // namespace rw::cli
