#pragma once
// Numerical gradient checking in float64 with central differences: a user feature for
// verifying derivations, not only a test helper.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "forward.hpp"
#include "tensor.hpp"

namespace rw {

struct GradcheckOptions {
    double step = 1e-6;
    // An element passes when |analytic - numeric| <= absolute_tolerance + relative_tolerance * |numeric|.
    double absolute_tolerance = 1e-7;
    double relative_tolerance = 1e-5;
    std::uint64_t seed = 0;  // for the random projection of non-scalar outputs
    // jvpcheck: <J v, u> and <v, J^T u> agree when |a - b| <= adjoint_tolerance * scale, scale
    // the larger of sum |J v * u| and sum |v * J^T u| (the size of the terms each sum adds up).
    double adjoint_tolerance = 1e-12;
};

struct InputCheck {
    std::string name;
    Shape shape;
    double max_abs_error = 0;
    double max_rel_error = 0;  // |a - n| / max(|a|, |n|), 0 where both are 0
    // The element that is furthest outside the tolerance (or, when all pass, the largest error).
    std::vector<std::size_t> worst_index;
    double worst_analytic = 0;
    double worst_numeric = 0;
    std::size_t failed_elements = 0;
    // The smallest first index of a failing element: the first time step that disagrees, for a
    // time-major tensor such as a layer's output (none when every element passes).
    std::optional<std::size_t> first_failed_row;
    bool passed = true;
};

struct GradcheckReport {
    bool passed = true;
    double max_abs_error = 0;
    double max_rel_error = 0;
    std::vector<InputCheck> inputs;
    std::string to_string() const;
};

using CheckedFunction = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;

// Checks d<f(inputs), r>/d(inputs) for a fixed random r (r = 1 when f returns one element), for
// every element of every input that requires a gradient. `names` label the inputs in the report.
GradcheckReport gradcheck(const CheckedFunction& function, std::vector<Tensor<double>> inputs,
                          const GradcheckOptions& options = {}, std::vector<std::string> names = {});

// Checks second derivatives: the gradient of <d<f, r>/d(inputs), v> (built with create_graph)
// against central differences of the first gradient.
GradcheckReport gradgradcheck(const CheckedFunction& function, std::vector<Tensor<double>> inputs,
                              const GradcheckOptions& options = {}, std::vector<std::string> names = {});

// ---- forward mode (issue 20) ----

// <J v, u> = <v, J^T u> for the tangent v on one input and the cotangent u on one output: two
// exact computations (rw::jvp, rw::vjp) of the same number, so they agree to round-off with no
// finite-difference noise, and a forward rule that is not the transpose of its backward rule
// (or the reverse) shows up at any size.
struct AdjointCheck {
    std::string output;
    double jvp_side = 0;   // <J v, u>
    double vjp_side = 0;   // <v, J^T u>
    double rel_error = 0;  // |jvp_side - vjp_side| / scale (GradcheckOptions::adjoint_tolerance), 0 when scale is 0
    bool passed = true;
};

// A random tangent on one input (the others zero).
struct TangentCheck {
    std::string input;
    std::vector<InputCheck> outputs;   // per output (named as the output): J v against central differences along v
    std::vector<AdjointCheck> adjoint; // per output
    bool passed() const;
};

struct JvpReport {
    bool passed = true;
    double max_abs_error = 0;  // J v against central differences
    double max_rel_error = 0;
    double max_adjoint_error = 0;
    GradcheckOptions options;
    std::vector<TangentCheck> tangents;  // per input that requires a gradient
    std::string to_string() const;
};

// Forward mode checked two ways for every input that requires a gradient: J v (rw::jvp) against
// central differences (f(x + e v) - f(x - e v)) / 2e per output element, and the adjoint identity
// with rw::vjp for a random u per output.
JvpReport jvpcheck(const TensorFunction<double>& function, std::vector<Tensor<double>> inputs,
                   const GradcheckOptions& options = {}, std::vector<std::string> names = {},
                   std::vector<std::string> output_names = {});
// The same for a closure that reads leaf tensors itself (a layer's parameters): tangents are set
// on the leaves for each forward pass and cleared after it; values are perturbed in place.
JvpReport jvpcheck_leaves(const std::function<std::vector<Tensor<double>>()>& function,
                          const std::vector<Tensor<double>>& leaves, const GradcheckOptions& options = {},
                          std::vector<std::string> names = {}, std::vector<std::string> output_names = {});

// Hessian-vector products (rw::hvp, forward-over-reverse) against central differences of
// gradients, (grad f(x + e v) - grad f(x - e v)) / 2e, for a random v over every input that
// requires a gradient; one row per input (its block of H v).
GradcheckReport hvpcheck(const LossFunction<double>& loss, std::vector<Tensor<double>> inputs,
                         const GradcheckOptions& options = {}, std::vector<std::string> names = {});
// The same over leaves a closure reads (rw::hvp_leaves).
GradcheckReport hvpcheck_leaves(const std::function<Tensor<double>()>& loss, const std::vector<Tensor<double>>& leaves,
                                const GradcheckOptions& options = {}, std::vector<std::string> names = {});

}  // namespace rw

template <>
struct fmt::formatter<rw::GradcheckReport> : fmt::formatter<std::string_view> {
    template <class Context>
    auto format(const rw::GradcheckReport& report, Context& context) const {
        return fmt::formatter<std::string_view>::format(report.to_string(), context);
    }
};

template <>
struct fmt::formatter<rw::JvpReport> : fmt::formatter<std::string_view> {
    template <class Context>
    auto format(const rw::JvpReport& report, Context& context) const {
        return fmt::formatter<std::string_view>::format(report.to_string(), context);
    }
};
