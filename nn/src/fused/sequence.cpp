// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// recomputation, row groups on threads, the saved buffers and the tape op around a cell's
// point-wise rules (cell_rules.hpp). The window of saved buffers and the row groups are in
// window.hpp, the step loops in forward_steps.hpp and backward_steps.hpp.

#include <atomic>
#include <exception>
#include <memory>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "backward_steps.hpp"
#include "driver.hpp"
#include "forward_steps.hpp"
#include "probe.hpp"
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

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const CellWeights<T>& w, const T* x,
                                   const std::vector<const T*>& initial) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, W = saved.segment, S = l.states;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, P});
    std::vector<xt::xarray<T>> finals(S);
    for (std::size_t s = 0; s < S; ++s) finals[s] = xt::xarray<T>::from_shape({B, d.width(s)});
    saved.gates = Buffer<T>(W * B * d.gate_width());
    for (std::size_t s = 0; s < S; ++s) saved.states.emplace_back(W * B * d.width(s));
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(W * B * H);
    if (l.second > 0) saved.gated = Buffer<T>(W * B * H);
    if (l.projection) saved.unprojected = Buffer<T>(W * B * H);

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

    std::vector<xt::xarray<T>> outputs;
    outputs.push_back(std::move(output));
    for (auto& f : finals) outputs.push_back(std::move(f));
    return outputs;
}

template <class T>
Gradients<T> backward(Saved<T>& saved, const BackwardContext<T>& ctx) {
    if (ctx.create_graph())
        throw GraphError(fmt::format(
            "backward of '{}' with create_graph=true: the fused recurrent kernel's backward is hand-written and "
            "cannot be differentiated again; run the layer on the generic path "
            "(layer.set_path(rw::nn::ExecutionPath::generic)) for higher-order gradients",
            ctx.op_name()));
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, GH = d.gate_width(), I = d.input, S = l.states;
    const std::size_t WB = saved.segment * B, RH = d.recurrent_width(), R2H = d.second_width();
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();

    if (saved.probe) {
        saved.probe->grad_states_before.clear();
        for (std::size_t s = 0; s < S; ++s)
            saved.probe->grad_states_before.push_back(xt::xarray<T>::from_shape({d.steps, B, d.width(s)}));
        saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, B, GH});
    }
    BackwardShared<T> shared;
    shared.saved = &saved;
    std::vector<xt::xarray<T>> grad_state(S);
    for (std::size_t s = 0; s < S; ++s) {
        const std::size_t W = d.width(s);
        grad_state[s] = xt::xarray<T>::from_shape({B, W});
        if (ctx.has_grad_output(1 + s)) std::copy_n(ctx.grad_output(1 + s).value().data(), B * W, grad_state[s].data());
        else std::fill_n(grad_state[s].data(), B * W, T(0));
        shared.grad_state.push_back(grad_state[s].data());
    }
    shared.grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;
    for (std::size_t s = 0; s < S; ++s) shared.need_h0 = shared.need_h0 || ctx.needs_input_grad(in.states + s);

    Buffer<T> grad_gates(WB * GH), grad_recurrent, grad_second, grad_projected;
    if (d.separate()) grad_recurrent = Buffer<T>(WB * RH);
    if (l.second > 0) grad_second = Buffer<T>(WB * R2H);
    if (l.projection) grad_projected = Buffer<T>(WB * P);
    T* dgx = grad_gates.data();
    T* dgh = d.separate() ? grad_recurrent.data() : dgx;
    shared.grad_gates = dgx;
    shared.grad_recurrent = dgh;
    shared.grad_second = grad_second.data();
    shared.grad_projected = grad_projected.data();
    for (std::size_t u = 0; u < l.units; ++u) shared.units.push_back(ctx.input(in.units + u).value().data());
    shared.weight_hh = in.weight_hh >= 0 ? ctx.input(in.weight_hh).value().data() : nullptr;
    shared.weight_second = in.weight_second >= 0 ? ctx.input(in.weight_second).value().data() : nullptr;
    shared.weight_projection = in.weight_projection >= 0 ? ctx.input(in.weight_projection).value().data() : nullptr;
    std::vector<std::unique_ptr<BackwardSteps<T>>> groups;
    for (const Rows& rows : saved.groups) groups.push_back(std::make_unique<BackwardSteps<T>>(shared, rows));

    // Reruns a segment's forward into the window (note: Recomputation).
    std::unique_ptr<ForwardPass<T>> rerun;
    std::vector<Buffer<T>> rerun_after;
    if (saved.recomputing()) {
        StepWeights<T> weights{w_ih,
                               in.bias_ih >= 0 ? ctx.input(in.bias_ih).value().data() : nullptr,
                               shared.weight_hh,
                               in.bias_hh >= 0 ? ctx.input(in.bias_hh).value().data() : nullptr,
                               shared.weight_second,
                               shared.weight_projection,
                               shared.units};
        rerun = std::make_unique<ForwardPass<T>>(saved, std::move(weights), x, saved.groups);
        for (std::size_t s = 0; s < S; ++s) rerun_after.emplace_back(B * d.width(s));
    }

    // The weight gradients, summed over the segments' GEMMs (one segment without recomputation).
    auto maybe = [&](int index, Shape shape) {
        return index >= 0 && ctx.needs_input_grad(index) ? xt::xarray<T>::from_shape(shape) : xt::xarray<T>();
    };
    auto wanted = [](const xt::xarray<T>& gradient) { return gradient.dimension() > 0; };  // 0-D: not asked for
    const bool want_dx = ctx.needs_input_grad(in.x);
    xt::xarray<T> dx = want_dx ? xt::xarray<T>::from_shape({d.steps, B, I}) : xt::xarray<T>();
    xt::xarray<T> dw_ih = maybe(in.weight_ih, {GH, I}), db_ih = maybe(in.bias_ih, {GH});
    xt::xarray<T> dw_hh = maybe(in.weight_hh, {RH, P}), db_hh = maybe(in.bias_hh, {RH});
    xt::xarray<T> dw_2 = maybe(in.weight_second, {R2H, H}), dw_proj = maybe(in.weight_projection, {P, H});
    auto weight_gradient = [&](xt::xarray<T>& out, std::size_t m, std::size_t n) {
        return wanted(out) ? std::make_unique<WeightGradient<T>>(out, m, n) : nullptr;
    };
    // Note: one product for both weights. Where the recurrent product adds into the gates, W_ih and
    // W_hh see the same dL/dG, so [dW_ih | dW_hh] = dG^T [x | h] can be one GEMM over rows of width
    // I + P, the rows of [x | h] copied per window. On the Zen 1 machine that pays where the joint
    // weight is summed transposed (tall and small), over many rows (LSTM at B=32, H=256: 42.6
    // against 39.3 GFLOP/s, the step 3.7% faster in paired runs) and loses otherwise (RNN tanh at
    // B=32: 3.4% slower; LSTM at B=1, 100 rows: 41.6 against 42.8 GFLOP/s), so only there.
    const std::size_t IP = I + P;
    const bool joint = wanted(dw_ih) && wanted(dw_hh) && !d.separate() && RH == GH &&
                       WeightGradient<T>::transposes(GH, IP) && WB >= 4 * IP;
    xt::xarray<T> dw_joint = joint ? xt::xarray<T>::from_shape({GH, IP}) : xt::xarray<T>();
    Buffer<T> joint_rows(joint ? WB * IP : 0);
    auto weight_joint = weight_gradient(dw_joint, GH, IP);
    auto weight_ih = joint ? nullptr : weight_gradient(dw_ih, GH, I);
    auto weight_hh = joint ? nullptr : weight_gradient(dw_hh, RH, P);
    auto weight_second = weight_gradient(dw_2, R2H, H), weight_projection = weight_gradient(dw_proj, P, H);
    // b_hh adds to the same pre-activations as b_ih: same gradient, summed once.
    const bool db_hh_is_db_ih = !d.separate() && RH == GH && wanted(db_ih);
    Buffer<T> sums(std::max(GH, RH));

    std::vector<const T*> after(S);
    for (std::size_t j = saved.segments(); j-- > 0;) {
        if (saved.window_segment != j) {
            std::vector<const T*> before(S);
            std::vector<T*> scratch(S);
            for (std::size_t s = 0; s < S; ++s) {
                before[s] = saved.boundary(s, j);
                scratch[s] = rerun_after[s].data();
            }
            rerun->run(j, before, scratch, nullptr);
        }
        for (std::size_t s = 0; s < S; ++s) after[s] = saved.boundary(s, j + 1);
        const std::size_t k0 = saved.first_k(j), k1 = saved.end_k(j), t0 = saved.first_t(j), rows = (k1 - k0) * B;
        for_each_group(groups.size(), [&](std::size_t g) { groups[g]->run(j, after); });
        if (saved.probe) std::copy_n(dgx, rows * GH, saved.probe->grad_gates.data() + t0 * B * GH);

        // This segment's share of the products over all steps; the first segment done sets them.
        const T beta = j + 1 == saved.segments() ? T(0) : T(1);
        const T* x_rows = x + t0 * B * I;
        if (want_dx) blas::gemm(false, false, rows, I, GH, T(1), dgx, GH, w_ih, I, T(0), dx.data() + t0 * B * I, I);
        if (joint) {
            T* joined = joint_rows.data();
            const T* h_rows = saved.states[0].data();
            for (std::size_t r = 0; r < rows; ++r) {
                std::copy_n(x_rows + r * I, I, joined + r * IP);
                std::copy_n(h_rows + r * P, P, joined + r * IP + I);
            }
            weight_joint->add(dgx, GH, joined, IP, rows, beta);
        }
        if (weight_ih) weight_ih->add(dgx, GH, x_rows, I, rows, beta);
        if (wanted(db_ih)) column_sums(dgx, rows, GH, GH, beta != T(0), db_ih.data(), sums.data());
        if (weight_hh) weight_hh->add(dgh, d.recurrent_stride(), saved.states[0].data(), P, rows, beta);
        if (wanted(db_hh) && !db_hh_is_db_ih)
            column_sums(dgh, rows, RH, d.recurrent_stride(), beta != T(0), db_hh.data(), sums.data());
        if (wanted(dw_2)) weight_second->add(grad_second.data(), R2H, saved.gated.data(), H, rows, beta);
        if (wanted(dw_proj)) weight_projection->add(grad_projected.data(), P, saved.unprojected.data(), H, rows, beta);
    }
    for (auto* weight : {weight_joint.get(), weight_ih.get(), weight_hh.get(), weight_second.get(), weight_projection.get()})
        if (weight) weight->finish();
    if (joint)
        for (std::size_t g = 0; g < GH; ++g) {
            const T* row = dw_joint.data() + g * IP;
            std::copy_n(row, I, dw_ih.data() + g * I);
            std::copy_n(row + I, P, dw_hh.data() + g * P);
        }
    if (db_hh_is_db_ih && wanted(db_hh)) db_hh = db_ih;

    Gradients<T> gradients(ctx.num_inputs());
    auto give = [&](int index, xt::xarray<T>& value) {
        if (index >= 0 && wanted(value)) gradients[index] = Tensor<T>(std::move(value));
    };
    give(in.x, dx);
    give(in.weight_ih, dw_ih);
    give(in.bias_ih, db_ih);
    give(in.weight_hh, dw_hh);
    give(in.bias_hh, db_hh);
    give(in.weight_second, dw_2);
    give(in.weight_projection, dw_proj);
    for (std::size_t u = 0; u < l.units; ++u)
        if (ctx.needs_input_grad(in.units + u)) {
            xt::xarray<T> sum = groups[0]->grad_units()[u];
            for (std::size_t g = 1; g < groups.size(); ++g) sum += groups[g]->grad_units()[u];
            gradients[in.units + u] = Tensor<T>(std::move(sum));
        }
    for (std::size_t s = 0; s < S; ++s)
        if (ctx.needs_input_grad(in.states + s)) gradients[in.states + s] = Tensor<T>(std::move(grad_state[s]));
    return gradients;
}

}  // namespace

template <class T>
SequenceResult<T> detail::run_sequence_probed(const CellRules<T>& rules, const Tensor<T>& input,
                                              const std::vector<Tensor<T>>& initial_state,
                                              const std::vector<std::int64_t>& lengths, bool reverse,
                                              const std::string& name, std::shared_ptr<SequenceProbe<T>> probe,
                                              std::shared_ptr<const void> owner, std::size_t segment) {
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
    // The probe's step records are written by one thread (note: Threads).
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

    std::vector<const T*> initial;
    for (const auto& s : initial_state) initial.push_back(s.value().data());
    auto values = forward(*saved, w, input.value().data(), initial);

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
    // The rules live in the cell; `owner` (the cell, when the layer runs it) keeps them alive.
    auto outputs = record_op<T>(op + (reverse ? "_reverse" : ""), std::move(inputs), std::move(values),
                                [saved](const BackwardContext<T>& ctx) -> Gradients<T> { return backward(*saved, ctx); });
    SequenceResult<T> result;
    result.output = outputs[0];
    result.final_state.assign(outputs.begin() + 1, outputs.end());
    return result;
}

template <class T>
SequenceResult<T> run_sequence(const CellRules<T>& rules, const Tensor<T>& input, const std::vector<Tensor<T>>& initial_state,
                               const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name,
                               std::size_t recompute_segment) {
    return detail::run_sequence_probed<T>(rules, input, initial_state, lengths, reverse, name, nullptr, nullptr,
                                          recompute_segment);
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
                                                           std::shared_ptr<const void>, std::size_t);
template SequenceResult<double> detail::run_sequence_probed(const CellRules<double>&, const Tensor<double>&,
                                                            const std::vector<Tensor<double>>&,
                                                            const std::vector<std::int64_t>&, bool, const std::string&,
                                                            std::shared_ptr<detail::SequenceProbe<double>>,
                                                            std::shared_ptr<const void>, std::size_t);
template SequenceResult<float> run_sequence(const CellRules<float>&, const Tensor<float>&, const std::vector<Tensor<float>>&,
                                            const std::vector<std::int64_t>&, bool, const std::string&, std::size_t);
template SequenceResult<double> run_sequence(const CellRules<double>&, const Tensor<double>&,
                                             const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&, bool,
                                             const std::string&, std::size_t);

}  // namespace rw::nn::fused
