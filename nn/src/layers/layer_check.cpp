#include "rewind/nn/layers/layer_check.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/ops.hpp>

namespace rw::nn {

namespace {

// What gradcheck differentiates: every output and final state, flattened into one vector.
Tensor<double> flattened(const RecurrentResult<double>& result) {
    std::vector<Tensor<double>> parts{reshape(result.output, {result.output.size()})};
    for (const auto& state : result.state) parts.push_back(reshape(state, {state.size()}));
    return concat(parts, 0);
}

// Whether forward() runs the layer step by step anyway (the generic path, or a cell without
// usable fused rules), so that probing h_t checks the same path.
bool runs_step_by_step(const Recurrent<double>& layer) {
    return layer.path() == ExecutionPath::generic || layer.cell(0, 0).usable_fused_rules() == nullptr;
}

// The probe is set for one forward and removed however that forward ends.
struct ProbeScope {
    Recurrent<double>& layer;
    ProbeScope(Recurrent<double>& layer, StepProbe<double> probe) : layer(layer) { layer.set_step_probe(std::move(probe)); }
    ~ProbeScope() { layer.set_step_probe(nullptr); }
    ProbeScope(const ProbeScope&) = delete;
    ProbeScope& operator=(const ProbeScope&) = delete;
};

std::string hidden_name(std::size_t layer, std::size_t direction) {
    return fmt::format("h_l{}{}", layer, direction == 1 ? "_reverse" : "");
}

}  // namespace

LayerCheck layer_check(Recurrent<double>& layer, const Tensor<double>& x, const std::vector<Tensor<double>>& initial_state,
                       const std::optional<std::vector<std::int64_t>>& lengths) {
    LayerCheck check;
    // The parameters are the layer's own handles, so the values gradcheck perturbs in place are
    // the ones forward() reads.
    for (const auto& [name, parameter] : layer.named_parameters()) {
        check.inputs.push_back(parameter);
        check.names.push_back(name);
    }
    const std::size_t first_data = check.inputs.size();
    check.inputs.push_back(x);
    check.names.push_back("x");
    const auto state_names = layer.state_names();
    for (std::size_t s = 0; s < initial_state.size(); ++s) {
        check.inputs.push_back(initial_state[s]);
        check.names.push_back(state_names.at(s) + "0");
    }
    check.function = [&layer, first_data, lengths](const std::vector<Tensor<double>>& in) {
        const std::vector<Tensor<double>> initial(in.begin() + std::ptrdiff_t(first_data) + 1, in.end());
        return flattened(layer.forward(in[first_data], initial, lengths));
    };
    return check;
}

GradcheckReport gradcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                                const std::vector<Tensor<double>>& initial_state,
                                const std::optional<std::vector<std::int64_t>>& lengths, const GradcheckOptions& options) {
    LayerCheck check = layer_check(layer, x, initial_state, lengths);
    return gradcheck(check.function, std::move(check.inputs), options, std::move(check.names));
}

GradcheckReport gradgradcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                                    const std::vector<Tensor<double>>& initial_state,
                                    const std::optional<std::vector<std::int64_t>>& lengths,
                                    const GradcheckOptions& options) {
    LayerCheck check = layer_check(layer, x, initial_state, lengths);
    return gradgradcheck(check.function, std::move(check.inputs), options, std::move(check.names));
}

// ---- forward mode ----

namespace {

// The layer's outputs as separate tensors over layer_check's inputs, read from the same handles.
struct LayerOutputs {
    LayerCheck check;
    std::size_t first_data = 0;  // x's index in check.inputs
    std::vector<std::string> output_names;
};

LayerOutputs layer_outputs(Recurrent<double>& layer, const Tensor<double>& x,
                           const std::vector<Tensor<double>>& initial_state,
                           const std::optional<std::vector<std::int64_t>>& lengths) {
    LayerOutputs outputs{layer_check(layer, x, initial_state, lengths), 0, {"output"}};
    outputs.first_data = outputs.check.inputs.size() - 1 - initial_state.size();
    for (const auto& name : layer.state_names()) outputs.output_names.push_back(name + "_n");
    return outputs;
}

std::vector<Tensor<double>> run(Recurrent<double>& layer, const LayerOutputs& outputs,
                                const std::optional<std::vector<std::int64_t>>& lengths) {
    const auto& in = outputs.check.inputs;
    const std::vector<Tensor<double>> initial(in.begin() + std::ptrdiff_t(outputs.first_data) + 1, in.end());
    RecurrentResult<double> result = layer.forward(in[outputs.first_data], initial, lengths);
    std::vector<Tensor<double>> all{result.output};
    all.insert(all.end(), result.state.begin(), result.state.end());
    return all;
}

}  // namespace

JvpReport jvpcheck_layer(Recurrent<double>& layer, const Tensor<double>& x, const std::vector<Tensor<double>>& initial_state,
                         const std::optional<std::vector<std::int64_t>>& lengths, const GradcheckOptions& options) {
    const LayerOutputs outputs = layer_outputs(layer, x, initial_state, lengths);
    return jvpcheck_leaves([&] { return run(layer, outputs, lengths); }, outputs.check.inputs, options,
                           outputs.check.names, outputs.output_names);
}

GradcheckReport hvpcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                               const std::vector<Tensor<double>>& initial_state,
                               const std::optional<std::vector<std::int64_t>>& lengths, const GradcheckOptions& options) {
    const LayerOutputs outputs = layer_outputs(layer, x, initial_state, lengths);
    Tensor<double> projection;  // r: fixed random weights of the flattened outputs, drawn once
    auto loss = [&] {
        const Tensor<double> all = flattened(layer.forward(outputs.check.inputs[outputs.first_data],
                                                           {outputs.check.inputs.begin() + std::ptrdiff_t(outputs.first_data) + 1,
                                                            outputs.check.inputs.end()},
                                                           lengths));
        if (!projection.defined()) {
            Generator generator(options.seed + 4);
            xt::xarray<double> r = xt::xarray<double>::from_shape(all.value().shape());
            for (double& v : r) v = generator.uniform(-1.0, 1.0);
            projection = Tensor<double>(std::move(r));
        }
        return sum(all * projection);
    };
    return hvpcheck_leaves(loss, outputs.check.inputs, options, outputs.check.names);
}

// ---- per time step ----

bool StepCheck::passed() const {
    return x.passed && std::all_of(hidden.begin(), hidden.end(), [](const InputCheck& h) { return h.passed; });
}

namespace {

using Checker = GradcheckReport (*)(const CheckedFunction&, std::vector<Tensor<double>>, const GradcheckOptions&,
                                    std::vector<std::string>);

// One driver for both orders: `check` is gradcheck or gradgradcheck over x_t and the probes d_t.
PerStepReport check_per_step(const char* what, Checker check, Recurrent<double>& layer, const Tensor<double>& x,
                             const std::vector<Tensor<double>>& initial_state,
                             const std::optional<std::vector<std::int64_t>>& lengths, const GradcheckOptions& options) {
    if (x.dim() != 3) throw_shape_error(what, "expects a 3-D input", x.shape());
    const std::size_t time_axis = layer.options().batch_first ? 1 : 0;
    const Tensor<double> time_major = time_axis == 1 ? permute(x, {1, 0, 2}) : x;
    const std::size_t steps = time_major.size(0), batch = time_major.size(1);
    const std::size_t streams = layer.options().num_layers * layer.num_directions();
    const bool probed = runs_step_by_step(layer);

    // The inputs: x_0 .. x_(T-1), then d_t of each layer and direction (stream-major), all leaves.
    std::vector<Tensor<double>> inputs;
    std::vector<std::string> names;
    for (std::size_t t = 0; t < steps; ++t) {
        inputs.emplace_back(xt::xarray<double>(xt::view(time_major.value(), t)), /*requires_grad=*/true);
        names.emplace_back("x");  // the step is the StepCheck's
    }
    if (probed)
        for (std::size_t stream = 0; stream < streams; ++stream)
            for (std::size_t t = 0; t < steps; ++t) {
                inputs.push_back(Tensor<double>::zeros({batch, layer.state_size(0)}, /*requires_grad=*/true));
                names.push_back(hidden_name(stream / layer.num_directions(), stream % layer.num_directions()));
            }
    const std::size_t directions = layer.num_directions();
    auto function = [&](const std::vector<Tensor<double>>& in) {
        const Tensor<double> xs = stack(std::vector<Tensor<double>>(in.begin(), in.begin() + std::ptrdiff_t(steps)), time_axis);
        if (!probed) return flattened(layer.forward(xs, initial_state, lengths));
        ProbeScope scope(layer, [&](std::size_t l, std::size_t d, std::size_t t, const Tensor<double>& h) {
            return add(h, in[steps + (l * directions + d) * steps + t]);
        });
        return flattened(layer.forward(xs, initial_state, lengths));
    };
    const GradcheckReport checked = check(function, std::move(inputs), options, std::move(names));

    PerStepReport report;
    report.passed = checked.passed;
    report.max_abs_error = checked.max_abs_error;
    report.max_rel_error = checked.max_rel_error;
    report.options = options;
    for (std::size_t t = 0; t < steps; ++t) {
        StepCheck step{.step = t, .x = checked.inputs[t], .hidden = {}};
        if (probed)
            for (std::size_t stream = 0; stream < streams; ++stream)
                step.hidden.push_back(checked.inputs[steps + stream * steps + t]);
        report.steps.push_back(std::move(step));
    }
    for (std::size_t t = steps; t-- > 0;)
        if (!report.steps[t].passed()) {
            report.first_disagreeing_step = t;
            break;
        }
    return report;
}

}  // namespace

PerStepReport gradcheck_layer_per_step(Recurrent<double>& layer, const Tensor<double>& x,
                                       const std::vector<Tensor<double>>& initial_state,
                                       const std::optional<std::vector<std::int64_t>>& lengths,
                                       const GradcheckOptions& options) {
    return check_per_step("gradcheck_layer_per_step", &gradcheck, layer, x, initial_state, lengths, options);
}

PerStepReport gradgradcheck_layer_per_step(Recurrent<double>& layer, const Tensor<double>& x,
                                           const std::vector<Tensor<double>>& initial_state,
                                           const std::optional<std::vector<std::int64_t>>& lengths,
                                           const GradcheckOptions& options) {
    PerStepReport report =
        check_per_step("gradgradcheck_layer_per_step", &gradgradcheck, layer, x, initial_state, lengths, options);
    report.quantity = 'G';
    return report;
}

std::string PerStepReport::to_string() const {
    // "dL" or "dG"; and what is wrong at a step: its backward, or (second order) the backward's derivative.
    const std::string d = std::string("d") + quantity;
    const std::string rule = quantity == 'L' ? "the backward" : "the second-order rule (the derivative of the backward)";
    const bool has_hidden = !steps.empty() && !steps.front().hidden.empty();
    std::string text = fmt::format("{:>6}  {:>11} {:>11}", "step", d + "/dx_t abs", "rel");
    if (has_hidden) text += fmt::format("  {:>11} {:>11} {}", d + "/dh_t abs", "rel", "worst of");
    text += '\n';
    for (std::size_t i = steps.size(); i-- > 0;) {
        const StepCheck& step = steps[i];
        std::vector<std::string> failed;
        if (!step.x.passed) failed.push_back(fmt::format("{}/dx_{}", d, step.step));
        text += fmt::format("{:>6}  {:>11.3e} {:>11.3e}", step.step, step.x.max_abs_error, step.x.max_rel_error);
        if (has_hidden) {
            const auto worst = std::max_element(step.hidden.begin(), step.hidden.end(), [](const auto& a, const auto& b) {
                return a.max_abs_error < b.max_abs_error;
            });
            text += fmt::format("  {:>11.3e} {:>11.3e} {:<14}", worst->max_abs_error, worst->max_rel_error, worst->name);
            for (const InputCheck& h : step.hidden)
                if (!h.passed) failed.push_back(fmt::format("{}/dh_{} ({})", d, step.step, h.name));
        }
        if (!failed.empty()) text += fmt::format("  FAILED: {}", fmt::join(failed, ", "));
        text.erase(text.find_last_not_of(' ') + 1);
        text += '\n';
    }
    if (!first_disagreeing_step) {
        text += fmt::format("every step agrees (|analytic - numeric| <= {:g} + {:g} |numeric|)\n",
                            options.absolute_tolerance, options.relative_tolerance);
        return text;
    }
    const std::size_t s = *first_disagreeing_step;
    const StepCheck& step = steps[s];
    text += fmt::format("first disagreement walking back from T: step {}", s);
    if (s + 1 < steps.size()) text += fmt::format(" (steps {}..{} agree)", s + 1, steps.size() - 1);
    std::vector<std::string> wrong_hidden;
    bool only_reverse = true;
    for (const InputCheck& h : step.hidden)
        if (!h.passed) {
            wrong_hidden.push_back(h.name);
            only_reverse = only_reverse && h.name.ends_with("_reverse");
        }
    if (step.hidden.empty())
        text += fmt::format(": {0}/dx_{1} is wrong ({0}/dh_t is not checked: the fused kernel keeps it)\n", d, s);
    else if (wrong_hidden.empty())
        text += fmt::format(": {1}/dh_{0} is right but {1}/dx_{0} wrong, so {2} of step {0} itself is wrong\n", s, d, rule);
    else if (only_reverse)
        text += fmt::format(": {}/dh_{} is wrong only in {}, whose recursion runs forward in time: there the step where "
                            "the error enters is the first disagreeing one walking forward from step 0\n",
                            d, s, fmt::join(wrong_hidden, ", "));
    else if (s + 1 < steps.size())
        text += fmt::format(": {3}/dh_{0} ({2}) is wrong although {3}/dh_{1} and {3}/dx_{1} are right, so the error enters "
                            "in {4} of step {1} into its state input h_{0} (or in h_{0}'s own term of {5}); the "
                            "earlier steps inherit it\n", s, s + 1, fmt::join(wrong_hidden, ", "), d, rule, quantity);
    else
        text += fmt::format(": {}/dh_{} ({}), the gradient with respect to the last hidden state, is wrong\n", d, s,
                            fmt::join(wrong_hidden, ", "));
    return text;
}

}  // namespace rw::nn
