// run_tangent_sweeps (tangent_run.hpp): the driver's full-memory forward into a Saved, as the
// recorded op's forward keeps it, then tangent_forward and tangent_backward over it.

#include "tangent_run.hpp"

#include "forward_steps.hpp"
#include "tangent.hpp"

namespace rw::nn::fused::detail {

using namespace driver;

namespace {

template <class T>
std::vector<const T*> pointers(const std::vector<Tensor<T>>& tensors) {
    std::vector<const T*> out;
    for (const auto& t : tensors) out.push_back(t.defined() ? t.value().data() : nullptr);
    return out;
}

}  // namespace

template <class T>
std::vector<Tensor<T>> tangent_op_inputs(const CellRules<T>& rules, const Tensor<T>& input,
                                         const std::vector<Tensor<T>>& initial_state) {
    const CellWeights<T> w = rules.weights();
    const CellLayout l = rules.layout();
    std::vector<Tensor<T>> inputs{input, w.input_weight};
    if (w.input_bias.defined()) inputs.push_back(w.input_bias);
    if (l.recurrent > 0) inputs.push_back(w.recurrent_weight);
    if (w.recurrent_bias.defined()) inputs.push_back(w.recurrent_bias);
    if (l.second > 0) inputs.push_back(w.gated_state_weight);
    if (l.projection) inputs.push_back(w.projection_weight);
    for (const auto& u : w.units) inputs.push_back(u);
    for (const auto& s : initial_state) inputs.push_back(s);
    return inputs;
}

template <class T>
TangentRun<T> run_tangent_sweeps(const CellRules<T>& rules, const Tensor<T>& input,
                                 const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths,
                                 bool reverse, const std::vector<Tensor<T>>& tangents,
                                 const std::vector<Tensor<T>>& grad_outputs,
                                 const std::vector<Tensor<T>>& grad_output_tangents, bool with_backward,
                                 const std::vector<bool>& needed) {
    Saved<T> saved;
    saved.rules = &rules;
    saved.reverse = reverse;
    saved.dims.layout = rules.layout();
    const CellWeights<T> w = rules.weights();
    check_arguments("fused_tangent", w, input, initial_state, lengths, saved.dims);
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, S = l.states;
    saved.segment = d.steps;
    saved.groups = split_rows(B, 1);
    if (!lengths.empty()) {
        saved.active.resize(d.steps * B);
        saved.all_active.resize(d.steps);
        for (std::size_t t = 0; t < d.steps; ++t) {
            bool all = true;
            for (std::size_t b = 0; b < B; ++b) {
                saved.active[t * B + b] = std::int64_t(t) < lengths[b];
                all = all && saved.active[t * B + b];
            }
            saved.all_active[t] = all;
        }
    }
    const std::vector<Tensor<T>> inputs = tangent_op_inputs(rules, input, initial_state);
    {
        InputIndex& in = saved.index;
        int next = 2;
        if (w.input_bias.defined()) in.bias_ih = next++;
        if (l.recurrent > 0) in.weight_hh = next++;
        if (w.recurrent_bias.defined()) in.bias_hh = next++;
        if (l.second > 0) in.weight_second = next++;
        if (l.projection) in.weight_projection = next++;
        in.units = next;
        in.states = next + int(l.units);
    }
    TangentRun<T> run;
    saved.inference = false;
    run.refusal = tangent_sweep_refusal(saved);
    if (!run.refusal.empty()) return run;

    saved.gates = Buffer<T>(d.steps * B * d.gate_width());
    for (std::size_t s = 0; s < S; ++s) saved.states.emplace_back(d.steps * B * d.width(s));
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(d.steps * B * d.hidden);
    StepWeights<T> weights{w.input_weight.value().data(),
                           w.input_bias.defined() ? w.input_bias.value().data() : nullptr,
                           l.recurrent > 0 ? w.recurrent_weight.value().data() : nullptr,
                           w.recurrent_bias.defined() ? w.recurrent_bias.value().data() : nullptr,
                           nullptr, nullptr, {}};
    ForwardPass<T> pass(saved, std::move(weights), input.value().data(), saved.groups);
    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, d.output});
    std::vector<xt::xarray<T>> finals;
    std::vector<T*> final_rows;
    for (std::size_t s = 0; s < S; ++s) {
        finals.push_back(xt::xarray<T>::from_shape({B, d.width(s)}));
        final_rows.push_back(finals[s].data());
    }
    pass.run(0, pointers(initial_state), final_rows, output.data());
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * d.width(s));
        std::copy_n(finals[s].data(), B * d.width(s), saved.finals[s].data());
    }
    run.outputs.push_back(Tensor<T>(std::move(output)));
    for (auto& f : finals) run.outputs.push_back(Tensor<T>(std::move(f)));

    const std::vector<const T*> values = pointers(inputs), tangent_ptrs = pointers(tangents);
    ForwardTangents<T> ft = tangent_forward(saved, values, tangent_ptrs);
    run.output_tangents.push_back(ft.output);
    for (const auto& f : ft.final_state) run.output_tangents.push_back(f);
    if (!with_backward) return run;
    TangentGradients<T> g = tangent_backward(saved, values, tangent_ptrs, ft, pointers(grad_outputs),
                                             pointers(grad_output_tangents),
                                             needed.empty() ? std::vector<bool>(inputs.size(), true) : needed);
    run.gradients = std::move(g.gradient);
    run.gradient_tangents = std::move(g.tangent);
    return run;
}

template std::vector<Tensor<float>> tangent_op_inputs(const CellRules<float>&, const Tensor<float>&,
                                                      const std::vector<Tensor<float>>&);
template std::vector<Tensor<double>> tangent_op_inputs(const CellRules<double>&, const Tensor<double>&,
                                                       const std::vector<Tensor<double>>&);
template TangentRun<float> run_tangent_sweeps(const CellRules<float>&, const Tensor<float>&,
                                              const std::vector<Tensor<float>>&, const std::vector<std::int64_t>&, bool,
                                              const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&,
                                              const std::vector<Tensor<float>>&, bool,
                                              const std::vector<bool>&);
template TangentRun<double> run_tangent_sweeps(const CellRules<double>&, const Tensor<double>&,
                                               const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&,
                                               bool, const std::vector<Tensor<double>>&,
                                               const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&,
                                               bool, const std::vector<bool>&);

}  // namespace rw::nn::fused::detail
