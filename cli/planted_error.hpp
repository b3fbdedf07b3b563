#pragma once
// `rewind gradcheck --plant-error S`: the check, checked. The layer is built as usual, except
// that its first cell (layer 0, forward direction) is wrapped so that the backward of step S
// scales the gradient reaching that step's new hidden state by 1.01: a wrong derivation that
// matters at one step only, written with the public custom-op API (record_op) as a user's would
// be. `--per-step` must then name step S, and the whole-tensor check fail.
//
// With --second-order the planted error is one only a second-order check can see: the backward
// of step S is right in value, but its own derivative (what create_graph records) is wrong, so
// the first-order check passes and `--second-order --per-step` must name step S. With --jvp the
// backward is right and the forward-mode rule of step S is off by 1%: the tangent of the output
// first disagrees at step S.

#include <cstdint>
#include <memory>

#include <rewind/nn/layers/recurrent.hpp>

namespace rw::cli {

enum class PlantedError {
    backward,      // the backward of step S off by 1%
    second_order,  // the backward of step S right, its derivative with respect to h_S off by 1% of the gradient
    jvp,           // the backward right, the forward-mode (JVP) rule of step S off by 1%
};

// The wrapped cell has no fused rules, so the layer runs step() on either path.
std::shared_ptr<nn::Recurrent<double>> make_layer_with_planted_error(const std::string& cell,
                                                                     const nn::RecurrentOptions& options,
                                                                     std::size_t step,
                                                                     PlantedError kind = PlantedError::backward);

}  // namespace rw::cli
