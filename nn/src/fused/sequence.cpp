// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// recomputation, row groups on threads, the saved buffers and the tape op around a cell's
// point-wise rules (cell_rules.hpp). The window of saved buffers and the row groups are in
// window.hpp, the step loops in forward_steps.hpp and backward_steps.hpp.

#include <atomic>
#include <exception>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "backward_steps.hpp"
#include "weight_gradients.hpp"
#include "driver.hpp"
#include "forward_steps.hpp"
#include "probe.hpp"
#include "replay.hpp"
#include "tangent.hpp"
#include "window.hpp"
#include "rewind/nn/layers/cell.hpp"

namespace rw::nn::fused {

namespace driver {

namespace {
std::atomic<std::size_t> live_bytes{0}, peak_bytes{0};
}  // namespace

void count_allocation(std::size_t bytes) {
    const std::size_t now = live_bytes.fetch_add(bytes) + bytes;
    std::size_t peak = peak_bytes.load();
    while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {}
}

void count_release(std::size_t bytes) { live_bytes.fetch_sub(bytes); }

}  // namespace driver

using namespace driver;

namespace {

// The op's values: the output, then the final states.
template <class T>
std::vector<xt::xarray<T>> finish(xt::xarray<T>&& output, std::vector<xt::xarray<T>>&& finals) {
    std::vector<xt::xarray<T>> outputs;
    outputs.push_back(std::move(output));
    for (auto& f : finals) outputs.push_back(std::move(f));
    return outputs;
}

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const CellWeights<T>& w, const T* x,
                                   const std::vector<const T*>& initial) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, W = saved.segment, S = l.states;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, P});
    std::vector<xt::xarray<T>> finals(S);
    for (std::size_t s = 0; s < S; ++s) finals[s] = xt::xarray<T>::from_shape({B, d.width(s)});
    // Inferring, the states take two slots and the per-step buffers one (Note [Inference], window.hpp).
    const std::size_t state_slots = saved.inference ? std::min<std::size_t>(W, 2) : W;
    const std::size_t step_slots = saved.inference ? 1 : W;
    saved.gates = Buffer<T>(W * B * d.gate_width());
    for (std::size_t s = 0; s < S; ++s) saved.states.emplace_back(state_slots * B * d.width(s));
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(step_slots * B * H);
    if (l.second > 0) saved.gated = Buffer<T>(step_slots * B * H);
    if (l.projection) saved.unprojected = Buffer<T>(step_slots * B * H);

    StepWeights<T> weights{w.input_weight.value().data(),
                           w.input_bias.defined() ? w.input_bias.value().data() : nullptr,
                           l.recurrent > 0 ? w.recurrent_weight.value().data() : nullptr,
                           w.recurrent_bias.defined() ? w.recurrent_bias.value().data() : nullptr,
                           l.second > 0 ? w.gated_state_weight.value().data() : nullptr,
                           l.projection ? w.projection_weight.value().data() : nullptr,
                           {}};
    for (const auto& u : w.units) weights.units.push_back(u.value().data());
    ForwardPass<T> pass(saved, std::move(weights), x, saved.groups);

    std::vector<T*> final_rows(S);
    for (std::size_t s = 0; s < S; ++s) final_rows[s] = finals[s].data();
    if (saved.inference) {
        // Each window starts from the states the last one left in the final states.
        std::vector<const T*> before = initial;
        for (std::size_t j = 0; j < saved.segments(); ++j) {
            pass.run(j, before, final_rows, output.data());
            before.assign(final_rows.begin(), final_rows.end());
        }
        return finish(std::move(output), std::move(finals));
    }
    if (!saved.recomputing()) {
        pass.run(0, initial, final_rows, output.data());
    } else {
        const std::size_t segments = saved.segments();
        for (std::size_t s = 0; s < S; ++s) {
            saved.checkpoints.emplace_back(segments * B * d.width(s));
            std::copy_n(initial[s], B * d.width(s), saved.checkpoints[s].data());
        }
        std::vector<const T*> before(S);
        std::vector<T*> after(S);
        for (std::size_t j = 0; j < segments; ++j) {
            for (std::size_t s = 0; s < S; ++s) {
                const std::size_t stride = B * d.width(s);
                before[s] = saved.checkpoints[s].data() + j * stride;
                after[s] = j + 1 == segments ? final_rows[s] : saved.checkpoints[s].data() + (j + 1) * stride;
            }
            pass.run(j, before, after, output.data());
        }
    }
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * d.width(s));
        std::copy_n(finals[s].data(), B * d.width(s), saved.finals[s].data());
    }
    if (saved.probe)  // the probe runs without recomputation: the window holds every step
        for (std::size_t s = 0; s < S; ++s) {
            const std::size_t Ws = d.width(s);
            xt::xarray<T> states_after = xt::xarray<T>::from_shape({d.steps, B, Ws});
            for (std::size_t k = 0; k < d.steps; ++k) {
                const std::size_t t = step_at(k, d.steps, saved.reverse);
                const T* source = k + 1 == d.steps ? finals[s].data()
                                                   : saved.states[s].data() + step_at(k + 1, d.steps, saved.reverse) * B * Ws;
                std::copy_n(source, B * Ws, states_after.data() + t * B * Ws);
            }
            saved.probe->states_after.push_back(std::move(states_after));
        }
    return finish(std::move(output), std::move(finals));
}

// The probe's gradient records, sized for every step and written by the backward.
template <class T>
void start_probe_gradients(Saved<T>& saved) {
    const Dims& d = saved.dims;
    saved.probe->grad_states_before.clear();
    for (std::size_t s = 0; s < d.layout.states; ++s)
        saved.probe->grad_states_before.push_back(xt::xarray<T>::from_shape({d.steps, d.batch, d.width(s)}));
    saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, d.batch, d.gate_width()});
}

// The backward's buffers and what the row groups' step loops share: the state gradients (the
// outputs' gradients to start with), the window's gate gradients, the weights the steps multiply.
template <class T>
class BackwardBuffers {
public:
    BackwardBuffers(Saved<T>& saved, const BackwardContext<T>& ctx) {
        const Dims& d = saved.dims;
        const CellLayout& l = d.layout;
        const InputIndex& in = saved.index;
        const std::size_t B = d.batch, WB = saved.segment * B;
        shared.saved = &saved;
        for (std::size_t s = 0; s < l.states; ++s) {
            const std::size_t W = d.width(s);
            grad_state.push_back(xt::xarray<T>::from_shape({B, W}));
            if (ctx.has_grad_output(1 + s))
                std::copy_n(ctx.grad_output(1 + s).value().data(), B * W, grad_state[s].data());
            else std::fill_n(grad_state[s].data(), B * W, T(0));
            shared.grad_state.push_back(grad_state[s].data());
            shared.need_h0 = shared.need_h0 || ctx.needs_input_grad(in.states + s);
        }
        shared.grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;
        grad_gates_ = Buffer<T>(WB * d.gate_width());
        if (d.separate()) grad_recurrent_ = Buffer<T>(WB * d.recurrent_width());
        if (l.second > 0) grad_second_ = Buffer<T>(WB * d.second_width());
        if (l.projection) grad_projected_ = Buffer<T>(WB * d.output);
        shared.grad_gates = grad_gates_.data();
        shared.grad_recurrent = d.separate() ? grad_recurrent_.data() : grad_gates_.data();
        shared.grad_second = grad_second_.data();
        shared.grad_projected = grad_projected_.data();
        for (std::size_t u = 0; u < l.units; ++u) shared.units.push_back(ctx.input(in.units + u).value().data());
        shared.weight_hh = optional_input(ctx, in.weight_hh);
        shared.weight_second = optional_input(ctx, in.weight_second);
        shared.weight_projection = optional_input(ctx, in.weight_projection);
    }
    BackwardBuffers(const BackwardBuffers&) = delete;
    BackwardBuffers& operator=(const BackwardBuffers&) = delete;

    static const T* optional_input(const BackwardContext<T>& ctx, int index) {
        return index >= 0 ? ctx.input(index).value().data() : nullptr;
    }

    std::vector<xt::xarray<T>> grad_state;  // per state [B, width]
    BackwardShared<T> shared;

private:
    Buffer<T> grad_gates_, grad_recurrent_, grad_second_, grad_projected_;
};

// The forward pass that reruns a segment into the window when recomputing (Note [Recomputation], window.hpp).
template <class T>
std::unique_ptr<ForwardPass<T>> rerun_pass(Saved<T>& saved, const BackwardContext<T>& ctx,
                                           const BackwardShared<T>& shared) {
    if (!saved.recomputing()) return nullptr;
    const InputIndex& in = saved.index;
    StepWeights<T> weights{ctx.input(in.weight_ih).value().data(),
                           BackwardBuffers<T>::optional_input(ctx, in.bias_ih),
                           shared.weight_hh,
                           BackwardBuffers<T>::optional_input(ctx, in.bias_hh),
                           shared.weight_second,
                           shared.weight_projection,
                           shared.units};
    return std::make_unique<ForwardPass<T>>(saved, std::move(weights), ctx.input(in.x).value().data(), saved.groups);
}

// The per-unit vectors' gradients: the row groups' sums added.
template <class T>
xt::xarray<T> unit_gradient(const std::vector<std::unique_ptr<BackwardSteps<T>>>& groups, std::size_t u) {
    xt::xarray<T> sum = groups[0]->grad_units()[u];
    for (std::size_t g = 1; g < groups.size(); ++g) sum += groups[g]->grad_units()[u];
    return sum;
}

// The segments from last to first: each rerun into the window unless it is there, its steps run
// backward by the row groups, then its share of the products over all steps (dx, the weights).
template <class T>
Gradients<T> backward(Saved<T>& saved, const BackwardContext<T>& ctx) {
    const Dims& d = saved.dims;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, GH = d.gate_width(), I = d.input, S = d.layout.states;
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();
    if (saved.probe) start_probe_gradients(saved);

    BackwardBuffers<T> buffers(saved, ctx);
    const BackwardShared<T>& shared = buffers.shared;
    std::vector<std::unique_ptr<BackwardSteps<T>>> groups;
    for (const Rows& rows : saved.groups) groups.push_back(std::make_unique<BackwardSteps<T>>(shared, rows));
    std::unique_ptr<ForwardPass<T>> rerun = rerun_pass(saved, ctx, shared);
    std::vector<Buffer<T>> rerun_after;
    if (rerun)
        for (std::size_t s = 0; s < S; ++s) rerun_after.emplace_back(B * d.width(s));

    const bool want_dx = ctx.needs_input_grad(in.x);
    xt::xarray<T> dx = want_dx ? xt::xarray<T>::from_shape({d.steps, B, I}) : xt::xarray<T>();
    WeightGradients<T> weights(d, in, saved.segment * B, ctx);
    std::vector<const T*> before(S), after(S);
    std::vector<T*> scratch(S);
    for (std::size_t j = saved.segments(); j-- > 0;) {
        if (saved.window_segment != j) {
            for (std::size_t s = 0; s < S; ++s) {
                before[s] = saved.boundary(s, j);
                scratch[s] = rerun_after[s].data();
            }
            rerun->run(j, before, scratch, nullptr);
        }
        for (std::size_t s = 0; s < S; ++s) after[s] = saved.boundary(s, j + 1);
        const std::size_t t0 = saved.first_t(j), rows = (saved.end_k(j) - saved.first_k(j)) * B;
        for_each_group(groups.size(), [&](std::size_t g) { groups[g]->run(j, after); });
        if (saved.probe) std::copy_n(shared.grad_gates, rows * GH, saved.probe->grad_gates.data() + t0 * B * GH);
        if (want_dx)
            blas::gemm(false, false, rows, I, GH, T(1), shared.grad_gates, GH, w_ih, I, T(0), dx.data() + t0 * B * I, I);
        weights.add(shared, x + t0 * B * I, rows, j + 1 == saved.segments());
    }
    weights.finish();

    Gradients<T> gradients(ctx.num_inputs());
    if (want_dx) gradients[in.x] = Tensor<T>(std::move(dx));
    weights.give(gradients);
    for (std::size_t u = 0; u < d.layout.units; ++u)
        if (ctx.needs_input_grad(in.units + u)) gradients[in.units + u] = Tensor<T>(unit_gradient(groups, u));
    for (std::size_t s = 0; s < S; ++s)
        if (ctx.needs_input_grad(in.states + s)) gradients[in.states + s] = Tensor<T>(std::move(buffers.grad_state[s]));
    return gradients;
}

}  // namespace

template <class T>
SequenceResult<T> detail::run_sequence_probed(const CellRules<T>& rules, const Tensor<T>& input,
                                              const std::vector<Tensor<T>>& initial_state,
                                              const std::vector<std::int64_t>& lengths, bool reverse,
                                              const std::string& name, std::shared_ptr<SequenceProbe<T>> probe,
                                              std::shared_ptr<const void> owner, std::size_t segment,
                                              SequenceReplay<T> replay) {
    auto saved = std::make_shared<Saved<T>>();
    saved->owner = std::move(owner);
    saved->probe = std::move(probe);
    saved->rules = &rules;
    saved->reverse = reverse;
    saved->dims.layout = rules.layout();
    const CellWeights<T> w = rules.weights();
    const std::string op = "fused_" + (name.empty() ? std::string("cell") : name);
    check_arguments(op, w, input, initial_state, lengths, saved->dims);
    const Dims& d = saved->dims;
    // The probe reads every step's buffers after the forward: it runs without recomputation.
    saved->segment = segment == 0 || segment > d.steps || saved->probe ? d.steps : segment;
    // The probe's step records are written by one thread (Note [Threads], window.hpp).
    saved->groups = split_rows(d.batch, saved->probe ? 1 : std::size_t(std::max(1, blas::num_threads())));
    if (!lengths.empty()) {
        bool any_short = false;
        for (auto length : lengths) any_short = any_short || length < std::int64_t(d.steps);
        if (any_short) {
            saved->active.resize(d.steps * d.batch);
            saved->all_active.resize(d.steps);
            for (std::size_t t = 0; t < d.steps; ++t) {
                bool all = true;
                for (std::size_t b = 0; b < d.batch; ++b) {
                    const bool on = std::int64_t(t) < lengths[b];
                    saved->active[t * d.batch + b] = on;
                    all = all && on;
                }
                saved->all_active[t] = all;
            }
        }
    }

    // The op's inputs: x, then the weights the layout uses, the per-unit vectors, the initial states.
    InputIndex& index = saved->index;
    std::vector<Tensor<T>> inputs{input, w.input_weight};
    auto add_input = [&](const Tensor<T>& tensor) {
        inputs.push_back(tensor);
        return int(inputs.size()) - 1;
    };
    if (w.input_bias.defined()) index.bias_ih = add_input(w.input_bias);
    if (d.layout.recurrent > 0) index.weight_hh = add_input(w.recurrent_weight);
    if (w.recurrent_bias.defined()) index.bias_hh = add_input(w.recurrent_bias);
    if (d.layout.second > 0) index.weight_second = add_input(w.gated_state_weight);
    if (d.layout.projection) index.weight_projection = add_input(w.projection_weight);
    index.units = int(inputs.size());
    for (const auto& u : w.units) add_input(u);
    index.states = int(inputs.size());
    for (const auto& s : initial_state) add_input(s);

    // With nothing to record the forward keeps nothing (Note [Inference], window.hpp); the probe
    // reads every step's buffers, so it never infers.
    bool record = false;
    for (const auto& tensor : inputs) record = record || tensor.requires_grad();
    bool tangents = false;
    if (forward_mode_enabled())
        for (const auto& tensor : inputs) tangents = tangents || tensor.has_tangent();
    // With tangents and tangent rules the forward keeps its steps for the fast sweeps (tangent.hpp).
    const bool sweeps = tangents && rules.has_tangent_rules();
    if (!saved->probe && !(record && grad_mode_enabled()) && !sweeps) {
        saved->inference = true;
        saved->segment = inference_segment(d.steps, d.batch);
    }
    std::vector<const T*> initial;
    for (const auto& s : initial_state) initial.push_back(s.value().data());
    auto values = forward(*saved, w, input.value().data(), initial);
    if (saved->inference && !tangents) {
        // Plain tensors, as record_op returns when it records nothing.
        SequenceResult<T> result;
        result.output = Tensor<T>(std::move(values[0]));
        for (std::size_t s = 1; s < values.size(); ++s) result.final_state.push_back(Tensor<T>(std::move(values[s])));
        return result;
    }
    // Beyond first order (create_graph, tangents) the op differentiates the replay (Note [Second
    // order through the fused op], replay.hpp); its values and first-order gradients stay the
    // fused forward's and backward's. Inferring with tangents, record_op records nothing but
    // still gives the outputs their tangents.
    auto replay_op = std::make_shared<replay::ReplayOp<T>>();
    replay_op->op = op + (reverse ? "_reverse" : "");
    replay_op->replay = std::move(replay);
    replay_op->index = index;
    if (rules.has_tangent_rules())  // the cell's tangent sweeps over the saved buffers (tangent.hpp)
        replay_op->sweeps = [saved](const std::vector<Tensor<T>>& inputs, const std::vector<Tensor<T>>& grad_outputs,
                                    const std::vector<Tensor<T>>& v, const std::vector<Tensor<T>>& u, bool want_jvp,
                                    const std::vector<bool>& want, replay::Directional<T>& result) {
            return driver::tangent_directional(*saved, inputs, grad_outputs, v, u, want_jvp, want, result.jvp,
                                               result.gradients);
        };
    replay_op->inputs = inputs.size();
    replay_op->outputs = values.size();
    const std::shared_ptr<const replay::ReplayOp<T>> held = replay_op;
    // `owner` keeps the rules alive with the graph: the cell when a layer runs it, the rules'
    // shared owner when run_sequence does.
    auto outputs = record_op<T>(
        held->op, std::move(inputs), std::move(values),
        [saved, held](const BackwardContext<T>& ctx) -> Gradients<T> {
            if (!replay::beyond_first_order(ctx)) return backward(*saved, ctx);
            return replay::record_backward(held, ctx, backward(*saved, ctx));
        },
        replay::forward_rule(held));
    SequenceResult<T> result;
    result.output = outputs[0];
    result.final_state.assign(outputs.begin() + 1, outputs.end());
    return result;
}

template <class T>
SequenceResult<T> run_sequence(std::shared_ptr<const CellRules<T>> rules, const Tensor<T>& input,
                               const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths,
                               bool reverse, const std::string& name, std::size_t recompute_segment,
                               SequenceReplay<T> replay) {
    if (!rules)
        throw std::invalid_argument(fmt::format("fused_{}: run_sequence was given no rules (a null pointer)",
                                                name.empty() ? std::string("cell") : name));
    const CellRules<T>& held = *rules;
    return detail::run_sequence_probed<T>(held, input, initial_state, lengths, reverse, name, nullptr, std::move(rules),
                                          recompute_segment, std::move(replay));
}

std::size_t row_groups(std::size_t batch) {
    return split_rows(batch, std::size_t(std::max(1, blas::num_threads()))).size();
}

DriverMemory driver_memory() { return {driver::live_bytes.load(), driver::peak_bytes.load()}; }

void reset_driver_memory_peak() { driver::peak_bytes.store(driver::live_bytes.load()); }

template SequenceResult<float> detail::run_sequence_probed(const CellRules<float>&, const Tensor<float>&,
                                                           const std::vector<Tensor<float>>&,
                                                           const std::vector<std::int64_t>&, bool, const std::string&,
                                                           std::shared_ptr<detail::SequenceProbe<float>>,
                                                           std::shared_ptr<const void>, std::size_t, SequenceReplay<float>);
template SequenceResult<double> detail::run_sequence_probed(const CellRules<double>&, const Tensor<double>&,
                                                            const std::vector<Tensor<double>>&,
                                                            const std::vector<std::int64_t>&, bool, const std::string&,
                                                            std::shared_ptr<detail::SequenceProbe<double>>,
                                                            std::shared_ptr<const void>, std::size_t, SequenceReplay<double>);
template SequenceResult<float> run_sequence(std::shared_ptr<const CellRules<float>>, const Tensor<float>&,
                                            const std::vector<Tensor<float>>&, const std::vector<std::int64_t>&, bool,
                                            const std::string&, std::size_t, SequenceReplay<float>);
template SequenceResult<double> run_sequence(std::shared_ptr<const CellRules<double>>, const Tensor<double>&,
                                             const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&, bool,
                                             const std::string&, std::size_t, SequenceReplay<double>);

}  // namespace rw::nn::fused
