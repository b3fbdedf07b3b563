#include "rewind/autograd/gradcheck.hpp"

#include <cmath>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xstrides.hpp>

#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

namespace {

using Array = xt::xarray<double>;

// The scalar that is differentiated: <f(inputs), projection>.
class Objective {
public:
    Objective(const CheckedFunction& function, std::uint64_t seed) : function_(function), seed_(seed) {}

    Tensor<double> operator()(const std::vector<Tensor<double>>& inputs) {
        Tensor<double> output = function_(inputs);
        if (output.size() == 1) return sum(output);
        if (!projection_.defined() || projection_.shape() != output.shape()) {
            std::mt19937_64 engine(seed_);
            std::uniform_real_distribution<double> uniform(-1.0, 1.0);
            Array weights = Array::from_shape(output.value().shape());
            for (double& w : weights) w = uniform(engine);
            projection_ = Tensor<double>(std::move(weights));
        }
        return sum(mul(output, projection_));
    }

private:
    const CheckedFunction& function_;
    std::uint64_t seed_;
    Tensor<double> projection_;
};

InputCheck compare(const std::string& name, const Array& analytic, const Array& numeric,
                   const GradcheckOptions& options) {
    InputCheck check;
    check.name = name;
    check.shape = to_shape(analytic.shape());
    double worst_score = -1;
    std::size_t worst_flat = 0;
    for (std::size_t i = 0; i < analytic.size(); ++i) {
        const double a = analytic.data()[i], n = numeric.data()[i];
        const double error = std::abs(a - n);
        const double scale = std::max(std::abs(a), std::abs(n));
        const double relative = scale > 0 ? error / scale : 0.0;
        const double allowed = options.absolute_tolerance + options.relative_tolerance * std::abs(n);
        const double score = std::isfinite(error) ? error / allowed : INFINITY;
        check.max_abs_error = std::max(check.max_abs_error, error);
        check.max_rel_error = std::max(check.max_rel_error, relative);
        if (!(error <= allowed)) ++check.failed_elements;
        if (score > worst_score) {
            worst_score = score;
            worst_flat = i;
        }
    }
    check.passed = check.failed_elements == 0;
    if (analytic.size() > 0) {
        auto index = xt::unravel_from_strides(worst_flat, analytic.strides(), xt::layout_type::row_major);
        check.worst_index.assign(index.begin(), index.end());
        check.worst_analytic = analytic.data()[worst_flat];
        check.worst_numeric = numeric.data()[worst_flat];
    }
    return check;
}

GradcheckReport check_gradients(const CheckedFunction& function, std::vector<Tensor<double>> inputs,
                                const GradcheckOptions& options, std::vector<std::string> names) {
    names.resize(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i)
        if (names[i].empty()) names[i] = fmt::format("input {}", i);

    Objective objective(function, options.seed);
    std::vector<Tensor<double>> wanted;
    std::vector<std::size_t> wanted_index;
    for (std::size_t i = 0; i < inputs.size(); ++i)
        if (inputs[i].requires_grad()) {
            wanted.push_back(inputs[i]);
            wanted_index.push_back(i);
        }
    std::vector<Tensor<double>> analytic = grad<double>({objective(inputs)}, wanted);

    GradcheckReport report;
    NoGradGuard no_grad;
    for (std::size_t w = 0; w < wanted.size(); ++w) {
        Array& value = inputs[wanted_index[w]].mutable_value();
        Array numeric = Array::from_shape(value.shape());
        for (std::size_t e = 0; e < value.size(); ++e) {
            const double original = value.data()[e];
            value.data()[e] = original + options.step;
            const double plus = objective(inputs).item();
            value.data()[e] = original - options.step;
            const double minus = objective(inputs).item();
            value.data()[e] = original;
            numeric.data()[e] = (plus - minus) / (2 * options.step);
        }
        Array analytic_value = analytic[w].defined() ? analytic[w].value() : Array(xt::zeros<double>(value.shape()));
        InputCheck check = compare(names[wanted_index[w]], analytic_value, numeric, options);
        report.passed = report.passed && check.passed;
        report.max_abs_error = std::max(report.max_abs_error, check.max_abs_error);
        report.max_rel_error = std::max(report.max_rel_error, check.max_rel_error);
        report.inputs.push_back(std::move(check));
    }
    return report;
}

}  // namespace

GradcheckReport gradcheck(const CheckedFunction& function, std::vector<Tensor<double>> inputs,
                          const GradcheckOptions& options, std::vector<std::string> names) {
    return check_gradients(function, std::move(inputs), options, std::move(names));
}

GradcheckReport gradgradcheck(const CheckedFunction& function, std::vector<Tensor<double>> inputs,
                              const GradcheckOptions& options, std::vector<std::string> names) {
    // The first gradient, projected onto fixed random directions v, as a function to check.
    auto first_gradient = [&function, &options](const std::vector<Tensor<double>>& xs) {
        Objective objective(function, options.seed);
        std::vector<Tensor<double>> wanted;
        for (const auto& x : xs)
            if (x.requires_grad()) wanted.push_back(x);
        EnableGradGuard grad_mode(true);
        auto gradients = grad<double>({objective(xs)}, wanted, {}, {.retain_graph = true, .create_graph = true});
        std::mt19937_64 engine(options.seed + 1);
        std::uniform_real_distribution<double> uniform(-1.0, 1.0);
        Tensor<double> total = Tensor<double>::scalar(0.0);
        for (std::size_t i = 0; i < gradients.size(); ++i) {
            Array direction = Array::from_shape(wanted[i].value().shape());
            for (double& d : direction) d = uniform(engine);
            if (gradients[i].defined()) total = add(total, sum(mul(gradients[i], Tensor<double>(direction))));
        }
        return total;
    };
    return check_gradients(first_gradient, std::move(inputs), options, std::move(names));
}

std::string GradcheckReport::to_string() const {
    std::string text = fmt::format("gradcheck {}: max abs error {:.3e}, max rel error {:.3e}\n",
                                   passed ? "passed" : "FAILED", max_abs_error, max_rel_error);
    for (const auto& input : inputs) {
        text += fmt::format("  {:<24} {:>12} abs {:.3e}  rel {:.3e}  worst at [{}]: analytic {:.10g} numeric {:.10g}{}\n",
                            input.name, shape_string(input.shape), input.max_abs_error, input.max_rel_error,
                            fmt::join(input.worst_index, ", "), input.worst_analytic, input.worst_numeric,
                            input.passed ? "" : fmt::format("  FAILED ({} elements)", input.failed_elements));
    }
    return text;
}

}  // namespace rw
