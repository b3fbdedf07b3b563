#pragma once
// Gradient checking of a whole recurrent layer in float64: every parameter, the input x and the
// given initial states, through the output and every final state, so a gradient that flows only
// into h_n or c_n (e.g. past a short sequence's end in the reverse direction) is checked too, and
// a mistake anywhere in the layer or in a user's cell shows up under the tensor's name.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <rewind/autograd/gradcheck.hpp>

#include "rewind/nn/layers/recurrent.hpp"

namespace rw::nn {

// What gradcheck differentiates: the inputs (the layer's own parameter handles under their
// names, then "x", then "h0" (and "c0") when an initial state is given) and the function of
// them, all outputs flattened into one vector.
struct LayerCheck {
    std::vector<Tensor<double>> inputs;
    std::vector<std::string> names;
    std::function<Tensor<double>(const std::vector<Tensor<double>>&)> function;
};

// x [T, B, I]; initial_state empty or one [L*D, B, H] tensor per state tensor. The layer is held
// by reference: it must outlive the returned function.
LayerCheck layer_check(Recurrent<double>& layer, const Tensor<double>& x,
                       const std::vector<Tensor<double>>& initial_state = {},
                       const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt);

GradcheckReport gradcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                                const std::vector<Tensor<double>>& initial_state = {},
                                const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                const GradcheckOptions& options = {});

}  // namespace rw::nn
