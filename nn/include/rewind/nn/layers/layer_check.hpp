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

// Second derivatives of the whole layer (rw::gradgradcheck over layer_check's inputs): with L as
// above and a fixed random v over every input, G = <dL/d(inputs), v> is built with create_graph
// and dG/d(inputs) checked against central differences of dL/d(inputs). A rule whose values are
// right but whose own derivative is wrong (what a gradient penalty or MAML differentiates) fails here.
GradcheckReport gradgradcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                                    const std::vector<Tensor<double>>& initial_state = {},
                                    const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                    const GradcheckOptions& options = {});

// ---- forward mode (issue 20) ----
// rw::jvpcheck_leaves over layer_check's inputs that require a gradient (the parameters under their
// names, x, h0 and c0 when given): a random tangent on each alone, its J v against central
// differences for each output ("output" [T, B, D*H], then "h_n" and "c_n"), and the adjoint
// identity <J v, u> = <v, J^T u> per output. On the fused path the tangents go through the fused
// op's forward-mode rule.
JvpReport jvpcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                         const std::vector<Tensor<double>>& initial_state = {},
                         const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                         const GradcheckOptions& options = {});

// rw::hvpcheck_leaves of gradcheck_layer's L = <outputs and final states, r> over the same inputs:
// H v (forward-over-reverse) against central differences of dL/d(inputs) along v.
GradcheckReport hvpcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                               const std::vector<Tensor<double>>& initial_state = {},
                               const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                               const GradcheckOptions& options = {});

// ---- per time step: where a wrong derivation enters ----
// L = <the layer's outputs and final states, r> for a fixed random r (as gradcheck_layer), and
// for every step t, against central differences in float64: dL/dx_t, and dL/dh_t of every layer
// and direction, the gradient with respect to that step's hidden state (everything after it
// included). h_t is reached through the layer's step probe (h_t + d_t with a zero leaf d_t), so
// the layer runs step by step; a layer on the fused path whose cell has a whole-sequence kernel
// keeps h_t inside that kernel, and then only dL/dx_t is checked (hidden is empty).
//
// A mistake in step s's backward makes dL/dx_s and dL/dh_(s-1) wrong, and through the recursion
// every earlier step as well, while steps after s agree: the latest failing step, found walking
// back from T, is where the error enters (for a forward direction; a reverse direction's
// recursion runs the other way).
struct StepCheck {
    std::size_t step = 0;
    InputCheck x;                    // dL/dx_t, [B, I]
    std::vector<InputCheck> hidden;  // dL/dh_t per layer, then direction: "h_l0", "h_l0_reverse", ...; [B, H]
    bool passed() const;
};

struct PerStepReport {
    // "L" for gradcheck_layer_per_step; "G" (= <dL/d(x_t, h_t), v>) for gradgradcheck_layer_per_step.
    char quantity = 'L';
    std::vector<StepCheck> steps;  // in time order
    std::optional<std::size_t> first_disagreeing_step;  // walking back from T; none when every step agrees
    bool passed = true;
    double max_abs_error = 0;
    double max_rel_error = 0;
    GradcheckOptions options;  // the step and tolerances used
    std::string to_string() const;
};

// x [T, B, I] ([B, T, I] when the layer is batch_first); initial_state and lengths as above
// (the initial state is held fixed here).
PerStepReport gradcheck_layer_per_step(Recurrent<double>& layer, const Tensor<double>& x,
                                       const std::vector<Tensor<double>>& initial_state = {},
                                       const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                       const GradcheckOptions& options = {});

// The same per step for second derivatives: G = <dL/d(x_0..x_(T-1), h_0..h_(T-1)), v> for a fixed
// random v, built with create_graph through the layer (through the fused op's double backward on
// the fused path), and dG/dx_t, dG/dh_t against central differences of the first gradients. A step
// whose second-order rule is wrong (its backward right in value, the backward's own derivative
// wrong) makes dG/dx_s or dG/dh_(s-1) wrong and every earlier step with it, while later steps
// agree, so the latest failing step walking back from T names it as in the first-order check.
PerStepReport gradgradcheck_layer_per_step(Recurrent<double>& layer, const Tensor<double>& x,
                                           const std::vector<Tensor<double>>& initial_state = {},
                                           const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                           const GradcheckOptions& options = {});

}  // namespace rw::nn
