#pragma once
// Numerical gradient checking in float64 with central differences: a user feature for
// verifying derivations, not only a test helper.

#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tensor.hpp"

namespace rw {

struct GradcheckOptions {
    double step = 1e-6;
    // An element passes when |analytic - numeric| <= absolute_tolerance + relative_tolerance * |numeric|.
    double absolute_tolerance = 1e-7;
    double relative_tolerance = 1e-5;
    std::uint64_t seed = 0;  // for the random projection of non-scalar outputs
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

}  // namespace rw

template <>
struct fmt::formatter<rw::GradcheckReport> : fmt::formatter<std::string_view> {
    template <class Context>
    auto format(const rw::GradcheckReport& report, Context& context) const {
        return fmt::formatter<std::string_view>::format(report.to_string(), context);
    }
};
