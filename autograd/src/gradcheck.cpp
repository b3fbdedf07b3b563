#include "rewind/autograd/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xstrides.hpp>

#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/forward.hpp"
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
        if (!(error <= allowed)) {
            ++check.failed_elements;
            const std::size_t row = analytic.dimension() > 0 ? i / (analytic.size() / analytic.shape(0)) : 0;
            if (!check.first_failed_row || row < *check.first_failed_row) check.first_failed_row = row;
        }
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

// One input's row, and the report's verdict and worst errors with it.
void add_check(GradcheckReport& report, InputCheck check) {
    report.passed = report.passed && check.passed;
    report.max_abs_error = std::max(report.max_abs_error, check.max_abs_error);
    report.max_rel_error = std::max(report.max_rel_error, check.max_rel_error);
    report.inputs.push_back(std::move(check));
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
        add_check(report, compare(names[wanted_index[w]], analytic_value, numeric, options));
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

// ---- forward mode ----

namespace {

Array random_like(const Tensor<double>& tensor, std::mt19937_64& engine) {
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    Array values = Array::from_shape(tensor.value().shape());
    for (double& v : values) v = uniform(engine);
    return values;
}

std::vector<std::string> labelled(std::vector<std::string> names, std::size_t count, const char* what) {
    names.resize(count);
    for (std::size_t i = 0; i < count; ++i)
        if (names[i].empty()) names[i] = fmt::format("{} {}", what, i);
    return names;
}

// The function under test as the forward-mode checks use it, however it reads its inputs.
struct ForwardProbes {
    std::vector<Tensor<double>> inputs;  // their values are perturbed in place
    std::function<std::vector<Tensor<double>>()> value;  // the outputs at the current values
    // J v per output for tangents per input (undefined: zero), and J^T u per input for cotangents per output.
    std::function<std::vector<Tensor<double>>(const std::vector<Tensor<double>>&)> jvp, vjp;
};

AdjointCheck adjoint(const std::string& output, const Array& jv, const Array& u, const Array& v, const Array& jtu,
                     double tolerance) {
    AdjointCheck check{.output = output};
    double scale_jvp = 0, scale_vjp = 0;
    for (std::size_t k = 0; k < jv.size(); ++k) {
        check.jvp_side += jv.data()[k] * u.data()[k];
        scale_jvp += std::abs(jv.data()[k] * u.data()[k]);
    }
    for (std::size_t k = 0; k < v.size(); ++k) {
        check.vjp_side += v.data()[k] * jtu.data()[k];
        scale_vjp += std::abs(v.data()[k] * jtu.data()[k]);
    }
    const double scale = std::max(scale_jvp, scale_vjp);
    check.rel_error = scale > 0 ? std::abs(check.jvp_side - check.vjp_side) / scale : 0.0;
    check.passed = check.rel_error <= tolerance;  // NaN fails
    return check;
}

JvpReport check_forward(ForwardProbes& probes, const GradcheckOptions& options, std::vector<std::string> names,
                        std::vector<std::string> output_names) {
    auto& inputs = probes.inputs;
    names = labelled(std::move(names), inputs.size(), "input");
    const std::vector<Tensor<double>> outputs = probes.value();
    output_names = labelled(std::move(output_names), outputs.size(), "output");
    std::mt19937_64 engine(options.seed + 2);
    // J^T u_o for a random u_o on each output alone.
    std::vector<Array> u;
    std::vector<std::vector<Tensor<double>>> transposed;
    for (std::size_t o = 0; o < outputs.size(); ++o) {
        u.push_back(random_like(outputs[o], engine));
        std::vector<Tensor<double>> cotangents(outputs.size());
        cotangents[o] = Tensor<double>(u.back());
        transposed.push_back(probes.vjp(cotangents));
    }
    JvpReport report;
    report.options = options;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (!inputs[i].requires_grad()) continue;
        const Array v = random_like(inputs[i], engine);
        std::vector<Tensor<double>> tangents(inputs.size());
        tangents[i] = Tensor<double>(v);
        const std::vector<Tensor<double>> jv = probes.jvp(tangents);
        std::vector<Tensor<double>> plus, minus;
        {
            Array& value = inputs[i].mutable_value();
            const Array original = value;
            value = original + options.step * v;
            plus = probes.value();
            value = original - options.step * v;
            minus = probes.value();
            value = original;
        }
        TangentCheck tangent{.input = names[i], .outputs = {}, .adjoint = {}};
        for (std::size_t o = 0; o < outputs.size(); ++o) {
            const Array numeric = (plus[o].value() - minus[o].value()) / (2 * options.step);
            tangent.outputs.push_back(compare(output_names[o], jv[o].value(), numeric, options));
            const Tensor<double>& jtu = transposed[o][i];
            tangent.adjoint.push_back(adjoint(output_names[o], jv[o].value(), u[o], v,
                                              jtu.defined() ? jtu.value() : Array(xt::zeros<double>(v.shape())),
                                              options.adjoint_tolerance));
            const InputCheck& check = tangent.outputs.back();
            report.max_abs_error = std::max(report.max_abs_error, check.max_abs_error);
            report.max_rel_error = std::max(report.max_rel_error, check.max_rel_error);
            const double adjoint_error = tangent.adjoint.back().rel_error;
            report.max_adjoint_error = std::isnan(adjoint_error) ? adjoint_error : std::max(report.max_adjoint_error, adjoint_error);
        }
        report.passed = report.passed && tangent.passed();
        report.tangents.push_back(std::move(tangent));
    }
    return report;
}

std::vector<Tensor<double>> zeros_where_undefined(std::vector<Tensor<double>> tensors,
                                                  const std::vector<Tensor<double>>& like) {
    tensors.resize(like.size());
    for (std::size_t i = 0; i < like.size(); ++i)
        if (!tensors[i].defined()) tensors[i] = Tensor<double>::zeros(like[i].shape());
    return tensors;
}

// The outputs' tangents with the leaves carrying `tangents` for one forward pass.
std::vector<Tensor<double>> leaves_jvp(const std::function<std::vector<Tensor<double>>()>& function,
                                       const std::vector<Tensor<double>>& leaves, const std::vector<Tensor<double>>& tangents) {
    struct Cleared {
        std::vector<Tensor<double>> leaves;
        ~Cleared() {
            for (auto& leaf : leaves) leaf.clear_tangent();
        }
    } cleared{leaves};
    for (std::size_t i = 0; i < leaves.size(); ++i)
        if (tangents[i].defined()) cleared.leaves[i].set_tangent(tangents[i]);
    NoGradGuard no_grad;
    ForwardModeGuard on(true);
    std::vector<Tensor<double>> outputs = function();
    std::vector<Tensor<double>> result;
    for (const auto& output : outputs) result.push_back(output.tangent());
    for (auto& output : outputs) output.clear_tangent();  // after reading all: two outputs may be one tensor
    return zeros_where_undefined(std::move(result), outputs);
}

// J^T u over the leaves that require a gradient (undefined for the others).
std::vector<Tensor<double>> leaves_vjp(const std::function<std::vector<Tensor<double>>()>& function,
                                       const std::vector<Tensor<double>>& leaves,
                                       const std::vector<Tensor<double>>& cotangents) {
    EnableGradGuard recording(true);
    const std::vector<Tensor<double>> outputs = function();
    std::vector<Tensor<double>> roots, seeds, wanted;
    for (std::size_t o = 0; o < outputs.size(); ++o)
        if (o < cotangents.size() && cotangents[o].defined() && outputs[o].requires_grad()) {
            roots.push_back(outputs[o]);
            seeds.push_back(cotangents[o]);
        }
    for (const auto& leaf : leaves)
        if (leaf.requires_grad()) wanted.push_back(leaf);
    std::vector<Tensor<double>> gradients(leaves.size());
    if (roots.empty()) return gradients;
    const std::vector<Tensor<double>> computed = grad<double>(roots, wanted, seeds);
    for (std::size_t i = 0, w = 0; i < leaves.size(); ++i)
        if (leaves[i].requires_grad()) gradients[i] = computed[w++];
    return gradients;
}

// H v for one random v over the inputs that require a gradient, against central differences of
// the gradient along v.
GradcheckReport check_hessian(std::vector<Tensor<double>>& inputs,
                              const std::function<std::vector<Tensor<double>>(const std::vector<Tensor<double>>&)>& product,
                              const std::function<std::vector<Tensor<double>>()>& gradient, const GradcheckOptions& options,
                              std::vector<std::string> names) {
    names = labelled(std::move(names), inputs.size(), "input");
    std::mt19937_64 engine(options.seed + 3);
    std::vector<Tensor<double>> vectors(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i)
        if (inputs[i].requires_grad()) vectors[i] = Tensor<double>(random_like(inputs[i], engine));
    const std::vector<Tensor<double>> analytic = product(vectors);
    auto shifted_gradient = [&](double sign) {
        std::vector<Array> originals;
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            originals.push_back(inputs[i].value());
            if (vectors[i].defined()) inputs[i].mutable_value() = originals.back() + sign * options.step * vectors[i].value();
        }
        const std::vector<Tensor<double>> g = gradient();
        for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i].mutable_value() = originals[i];
        return g;
    };
    const std::vector<Tensor<double>> plus = shifted_gradient(1), minus = shifted_gradient(-1);
    GradcheckReport report;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        if (!vectors[i].defined()) continue;
        auto value_or_zeros = [&](const Tensor<double>& t) {
            return t.defined() ? t.value() : Array(xt::zeros<double>(inputs[i].value().shape()));
        };
        const Array numeric = (value_or_zeros(plus[i]) - value_or_zeros(minus[i])) / (2 * options.step);
        add_check(report, compare(names[i], value_or_zeros(analytic[i]), numeric, options));
    }
    return report;
}

}  // namespace

bool TangentCheck::passed() const {
    return std::all_of(outputs.begin(), outputs.end(), [](const InputCheck& c) { return c.passed; }) &&
           std::all_of(adjoint.begin(), adjoint.end(), [](const AdjointCheck& c) { return c.passed; });
}

JvpReport jvpcheck(const TensorFunction<double>& function, std::vector<Tensor<double>> inputs,
                   const GradcheckOptions& options, std::vector<std::string> names, std::vector<std::string> output_names) {
    ForwardProbes probes{.inputs = std::move(inputs), .value = {}, .jvp = {}, .vjp = {}};
    probes.value = [&] {
        NoGradGuard no_grad;
        return function(probes.inputs);
    };
    probes.jvp = [&](const std::vector<Tensor<double>>& tangents) { return jvp(function, probes.inputs, tangents).tangents; };
    probes.vjp = [&](const std::vector<Tensor<double>>& cotangents) {
        return vjp(function, probes.inputs, cotangents).gradients;
    };
    return check_forward(probes, options, std::move(names), std::move(output_names));
}

JvpReport jvpcheck_leaves(const std::function<std::vector<Tensor<double>>()>& function,
                          const std::vector<Tensor<double>>& leaves, const GradcheckOptions& options,
                          std::vector<std::string> names, std::vector<std::string> output_names) {
    ForwardProbes probes{.inputs = leaves, .value = {}, .jvp = {}, .vjp = {}};
    probes.value = [&] {
        NoGradGuard no_grad;
        return function();
    };
    probes.jvp = [&](const std::vector<Tensor<double>>& tangents) { return leaves_jvp(function, leaves, tangents); };
    probes.vjp = [&](const std::vector<Tensor<double>>& cotangents) { return leaves_vjp(function, leaves, cotangents); };
    return check_forward(probes, options, std::move(names), std::move(output_names));
}

GradcheckReport hvpcheck(const LossFunction<double>& loss, std::vector<Tensor<double>> inputs,
                         const GradcheckOptions& options, std::vector<std::string> names) {
    auto product = [&](const std::vector<Tensor<double>>& vectors) { return hvp(loss, inputs, vectors).product; };
    auto gradient = [&] {
        std::vector<Tensor<double>> leaves;
        for (const auto& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
        EnableGradGuard recording(true);
        return grad<double>({loss(leaves)}, leaves);
    };
    return check_hessian(inputs, product, gradient, options, std::move(names));
}

GradcheckReport hvpcheck_leaves(const std::function<Tensor<double>()>& loss, const std::vector<Tensor<double>>& leaves,
                                const GradcheckOptions& options, std::vector<std::string> names) {
    std::vector<Tensor<double>> inputs = leaves;
    // hvp_leaves and grad take the leaves that require a gradient; the others keep undefined rows.
    std::vector<Tensor<double>> wanted;
    for (const auto& leaf : leaves)
        if (leaf.requires_grad()) wanted.push_back(leaf);
    auto spread = [&](const std::vector<Tensor<double>>& computed) {
        std::vector<Tensor<double>> all(leaves.size());
        for (std::size_t i = 0, w = 0; i < leaves.size(); ++i)
            if (leaves[i].requires_grad()) all[i] = computed[w++];
        return all;
    };
    auto product = [&](const std::vector<Tensor<double>>& vectors) {
        std::vector<Tensor<double>> wanted_vectors;
        for (std::size_t i = 0; i < leaves.size(); ++i)
            if (leaves[i].requires_grad()) wanted_vectors.push_back(vectors[i]);
        return spread(hvp_leaves(loss, wanted, wanted_vectors).product);
    };
    auto gradient = [&] {
        EnableGradGuard recording(true);
        return spread(grad<double>({loss()}, wanted));
    };
    return check_hessian(inputs, product, gradient, options, std::move(names));
}

std::string JvpReport::to_string() const {
    std::string text = fmt::format(
        "jvpcheck {}: J v against central differences max abs error {:.3e}, max rel error {:.3e}; adjoint identity "
        "<J v, u> = <v, J^T u> max rel error {:.3e} (tolerance {:g})\n",
        passed ? "passed" : "FAILED", max_abs_error, max_rel_error, max_adjoint_error, options.adjoint_tolerance);
    for (const auto& tangent : tangents)
        for (std::size_t o = 0; o < tangent.outputs.size(); ++o) {
            const InputCheck& c = tangent.outputs[o];
            const AdjointCheck& a = tangent.adjoint[o];
            text += fmt::format("  v on {:<18} {:<10} abs {:.3e}  rel {:.3e}  worst at [{}]  adjoint rel {:.3e}{}{}\n",
                                tangent.input, c.name, c.max_abs_error, c.max_rel_error, fmt::join(c.worst_index, ", "),
                                a.rel_error, c.passed ? "" : fmt::format("  J v FAILED ({} elements)", c.failed_elements),
                                a.passed ? "" : "  ADJOINT FAILED");
        }
    return text;
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
