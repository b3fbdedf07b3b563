// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// the saved buffers and the tape op around a cell's point-wise rules (cell_rules.hpp).

#include <memory>

#include <fmt/format.h>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "driver.hpp"
#include "probe.hpp"
#include "rewind/nn/layers/cell.hpp"

namespace rw::nn::fused {

using namespace driver;

namespace {

// Everything the backward needs besides the op's inputs, in time order (index t is step t
// whatever the direction).
template <class T>
struct Saved {
    const CellRules<T>* rules = nullptr;
    std::shared_ptr<const void> owner;  // keeps `rules` alive while the graph is
    Dims dims;
    InputIndex index;
    bool reverse = false;
    Buffer<T> gates;                  // [T, B, G*H] as the forward rule left them
    std::vector<Buffer<T>> states;    // per state: [T, B, width] before step t
    std::vector<Buffer<T>> finals;    // per state: [B, width] after the last processed step
    std::vector<Buffer<T>> extra;     // per saved buffer: [T, B, H]
    Buffer<T> gated;                  // two-stage: q [T, B, H]
    Buffer<T> unprojected;            // projection: m [T, B, H], zeros in finished rows
    std::vector<std::uint8_t> active;  // [T, B], empty when every row runs every step
    std::vector<bool> all_active;      // per step
    std::shared_ptr<detail::SequenceProbe<T>> probe;  // null unless checking

    bool row_active(std::size_t t, std::size_t b) const {
        return active.empty() || all_active[t] || active[t * dims.batch + b];
    }
};

// ---- forward ----

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const CellWeights<T>& w, const T* x,
                                   const std::vector<const T*>& initial) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, GH = d.gate_width(), TB = d.steps * d.batch, S = l.states;
    const T* b_hh = w.bias_hh.defined() ? w.bias_hh.value().data() : nullptr;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, P});
    std::vector<xt::xarray<T>> finals(S);
    for (std::size_t s = 0; s < S; ++s) finals[s] = xt::xarray<T>::from_shape({B, d.width(s)});

    // All input projections at once, on top of the biases outside the recurrence.
    saved.gates = Buffer<T>(TB * GH);
    T* gates = saved.gates.data();
    fill_rows(gates, TB, GH, w.bias_ih.defined() ? w.bias_ih.value().data() : nullptr,
              d.separate() ? nullptr : b_hh, d.recurrent_width());
    blas::gemm(false, true, TB, GH, d.input, T(1), x, d.input, w.weight_ih.value().data(), d.input, T(1), gates, GH);

    const std::size_t first = step_at(0, d.steps, saved.reverse);
    for (std::size_t s = 0; s < S; ++s) {
        saved.states.emplace_back(TB * d.width(s));
        std::copy_n(initial[s], B * d.width(s), saved.states[s].data() + first * B * d.width(s));
    }
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(TB * H);
    if (l.second > 0) saved.gated = Buffer<T>(TB * H);
    if (l.projection) saved.unprojected = Buffer<T>(TB * H);
    Buffer<T> recurrent_out, second_out;
    if (d.separate()) recurrent_out = Buffer<T>(B * d.recurrent_width());
    if (l.second > 0) second_out = Buffer<T>(B * d.second_width());
    std::vector<const T*> units;
    for (const auto& u : w.units) units.push_back(u.value().data());

    // h W_hh^T every step with the same W_hh (and m W_proj^T): packed once for all steps (gemm.hpp).
    std::unique_ptr<blas::PackedGemm<T>> recurrent, second, projection;
    if (l.recurrent > 0)
        recurrent = std::make_unique<blas::PackedGemm<T>>(true, B, d.recurrent_width(), P, w.weight_hh.value().data(), P,
                                                          d.separate() ? T(0) : T(1), P,
                                                          d.separate() ? d.recurrent_width() : GH, d.steps);
    if (l.second > 0)
        second = std::make_unique<blas::PackedGemm<T>>(true, B, d.second_width(), H, w.weight_second.value().data(), H,
                                                       T(0), H, d.second_width(), d.steps);
    if (l.projection)
        projection = std::make_unique<blas::PackedGemm<T>>(true, B, P, H, w.weight_projection.value().data(), H, T(0), H,
                                                           P, d.steps);

    // State s before step t, and after the step that runs at position k (next_at, last).
    auto before = [&](std::size_t s, std::size_t t) { return saved.states[s].data() + t * B * d.width(s); };
    auto after = [&](std::size_t s, std::size_t next_at, bool last) {
        return last ? finals[s].data() : before(s, next_at);
    };
    std::vector<const T*> state(S);
    std::vector<T*> next(S), extra(l.saved);
    ForwardRow<T> row;
    row.hidden = H;
    row.output = P;
    row.state = state.data();
    row.next_state = next.data();
    row.saved = extra.data();
    row.units = units.data();
    // Points the row at row b of step t (next_at: where step t's states go).
    auto point = [&](std::size_t t, std::size_t next_at, bool last, std::size_t b) {
        row.gates = gates + (t * B + b) * GH;
        for (std::size_t s = 0; s < S; ++s) {
            state[s] = before(s, t) + b * d.width(s);
            next[s] = after(s, next_at, last) + b * d.width(s);
        }
        if (l.projection) {  // the rule sees no h and writes m; the driver projects it (cell_rules.hpp)
            state[0] = nullptr;
            next[0] = saved.unprojected.data() + (t * B + b) * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra[e] = saved.extra[e].data() + (t * B + b) * H;
        row.recurrent = d.separate() ? recurrent_out.data() + b * d.recurrent_width() : nullptr;
        row.bias_hh = d.separate() ? b_hh : nullptr;
        row.gated_state = l.second > 0 ? saved.gated.data() + (t * B + b) * H : nullptr;
        row.second = l.second > 0 ? second_out.data() + b * d.second_width() : nullptr;
    };

    for (std::size_t k = 0; k < d.steps; ++k) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        const bool last = k + 1 == d.steps;
        const std::size_t next_at = last ? 0 : step_at(k + 1, d.steps, saved.reverse);
        if (recurrent)
            recurrent->operator()(before(0, t), d.separate() ? recurrent_out.data() : gates + t * B * GH);
        for (std::size_t b = 0; b < B; ++b) {
            point(t, next_at, last, b);
            if (saved.row_active(t, b)) {
                saved.rules->forward(row);
                continue;
            }
            // A finished row keeps its state (a projected h after the projection below); q and m
            // are zeroed so the dW_2 and dW_proj GEMMs read no garbage.
            for (std::size_t s = l.projection ? 1 : 0; s < S; ++s) std::copy_n(state[s], d.width(s), next[s]);
            if (row.gated_state) std::fill_n(row.gated_state, H, T(0));
            if (l.projection) std::fill_n(next[0], H, T(0));
        }
        if (second) {
            second->operator()(saved.gated.data() + t * B * H, second_out.data());
            for (std::size_t b = 0; b < B; ++b)
                if (saved.row_active(t, b)) {
                    point(t, next_at, last, b);
                    saved.rules->forward_second(row);
                }
        }
        if (projection) {
            T* h = after(0, next_at, last);
            projection->operator()(saved.unprojected.data() + t * B * H, h);
            for (std::size_t b = 0; b < B; ++b)
                if (!saved.row_active(t, b)) std::copy_n(before(0, t) + b * P, P, h + b * P);
        }
        // The output is h after the step, zeros in finished rows.
        const T* h = after(0, next_at, last);
        T* out = output.data() + t * B * P;
        for (std::size_t b = 0; b < B; ++b) {
            if (saved.row_active(t, b)) std::copy_n(h + b * P, P, out + b * P);
            else std::fill_n(out + b * P, P, T(0));
        }
    }
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * d.width(s));
        std::copy_n(finals[s].data(), B * d.width(s), saved.finals[s].data());
    }
    if (saved.probe)
        for (std::size_t s = 0; s < S; ++s) {
            const std::size_t W = d.width(s);
            xt::xarray<T> states_after = xt::xarray<T>::from_shape({d.steps, B, W});
            for (std::size_t k = 0; k < d.steps; ++k) {
                const std::size_t t = step_at(k, d.steps, saved.reverse);
                const bool last = k + 1 == d.steps;
                std::copy_n(after(s, last ? 0 : step_at(k + 1, d.steps, saved.reverse), last), B * W,
                            states_after.data() + t * B * W);
            }
            saved.probe->states_after.push_back(std::move(states_after));
        }

    std::vector<xt::xarray<T>> outputs;
    outputs.push_back(std::move(output));
    for (auto& f : finals) outputs.push_back(std::move(f));
    return outputs;
}

// ---- backward ----

template <class T>
Gradients<T> backward(const Saved<T>& saved, const BackwardContext<T>& ctx) {
    if (ctx.create_graph())
        throw GraphError(fmt::format(
            "backward of '{}' with create_graph=true: the fused recurrent kernel's backward is hand-written and "
            "cannot be differentiated again; run the layer on the generic path "
            "(layer.set_path(rw::nn::ExecutionPath::generic)) for higher-order gradients",
            ctx.op_name()));
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, GH = d.gate_width(), TB = d.steps * d.batch,
                      I = d.input, S = l.states;
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();

    if (saved.probe) {
        saved.probe->grad_states_before.clear();
        for (std::size_t s = 0; s < S; ++s)
            saved.probe->grad_states_before.push_back(xt::xarray<T>::from_shape({d.steps, B, d.width(s)}));
        saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, B, GH});
    }
    std::vector<xt::xarray<T>> grad_state(S);
    for (std::size_t s = 0; s < S; ++s) {
        const std::size_t W = d.width(s);
        grad_state[s] = xt::xarray<T>::from_shape({B, W});
        if (ctx.has_grad_output(1 + s)) std::copy_n(ctx.grad_output(1 + s).value().data(), B * W, grad_state[s].data());
        else std::fill_n(grad_state[s].data(), B * W, T(0));
    }
    const T* grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;
    bool need_h0 = false;
    for (std::size_t s = 0; s < S; ++s) need_h0 = need_h0 || ctx.needs_input_grad(in.states + s);

    Buffer<T> grad_gates(TB * GH), grad_recurrent, grad_second, grad_gated;
    if (d.separate()) grad_recurrent = Buffer<T>(TB * d.recurrent_width());
    if (l.second > 0) {
        grad_second = Buffer<T>(TB * d.second_width());
        grad_gated = Buffer<T>(B * H);
    }
    // Projection: dh' of every step (zeros in finished rows) for dW_proj, and dm = dh' W_proj.
    Buffer<T> grad_projected, grad_unprojected;
    if (l.projection) {
        grad_projected = Buffer<T>(TB * P);
        grad_unprojected = Buffer<T>(B * H);
    }
    T* dgx = grad_gates.data();
    T* dgh = d.separate() ? grad_recurrent.data() : dgx;
    std::vector<xt::xarray<T>> grad_units(l.units);
    std::vector<const T*> units;
    std::vector<T*> grad_unit_ptrs;
    for (std::size_t u = 0; u < l.units; ++u) {
        grad_units[u] = xt::zeros<T>({H});
        grad_unit_ptrs.push_back(grad_units[u].data());
        units.push_back(ctx.input(in.units + u).value().data());
    }

    // dh_{t-1} += dR W_hh, dq = dR_2 W_2 and dm = dh' W_proj every step: the weights packed once (gemm.hpp).
    std::unique_ptr<blas::PackedGemm<T>> recurrent_backward, second_backward, projection_backward;
    if (l.recurrent > 0)
        recurrent_backward = std::make_unique<blas::PackedGemm<T>>(false, B, P, d.recurrent_width(),
                                                                   ctx.input(in.weight_hh).value().data(), P, T(1),
                                                                   d.recurrent_stride(), P, d.steps);
    if (l.second > 0)
        second_backward = std::make_unique<blas::PackedGemm<T>>(false, B, H, d.second_width(),
                                                                ctx.input(in.weight_second).value().data(), H, T(0),
                                                                d.second_width(), H, d.steps);
    if (l.projection)
        projection_backward = std::make_unique<blas::PackedGemm<T>>(
            false, B, H, P, ctx.input(in.weight_projection).value().data(), H, T(0), P, H, d.steps);

    std::vector<const T*> state(S), next(S), extra(l.saved);
    std::vector<T*> dstate(S);
    BackwardRow<T> row;
    row.hidden = H;
    row.output = P;
    row.state = state.data();
    row.next_state = next.data();
    row.saved = extra.data();
    row.units = units.data();
    row.grad_state = dstate.data();
    row.grad_units = grad_unit_ptrs.data();
    auto point = [&](std::size_t t, std::size_t next_at, bool last, std::size_t b) {
        row.gates = saved.gates.data() + (t * B + b) * GH;
        for (std::size_t s = 0; s < S; ++s) {
            const std::size_t W = d.width(s);
            state[s] = saved.states[s].data() + (t * B + b) * W;
            next[s] = (last ? saved.finals[s].data() : saved.states[s].data() + next_at * B * W) + b * W;
            dstate[s] = grad_state[s].data() + b * W;
        }
        if (l.projection) {  // as in the forward: no h, m in its place, dL/dm in the row's dh
            state[0] = nullptr;
            next[0] = saved.unprojected.data() + (t * B + b) * H;
            dstate[0] = grad_unprojected.data() + b * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra[e] = saved.extra[e].data() + (t * B + b) * H;
        row.grad_gates = dgx + (t * B + b) * GH;
        row.grad_recurrent = d.separate() ? dgh + (t * B + b) * d.recurrent_width() : nullptr;
        row.gated_state = l.second > 0 ? saved.gated.data() + (t * B + b) * H : nullptr;
        row.grad_second = l.second > 0 ? grad_second.data() + (t * B + b) * d.second_width() : nullptr;
        row.grad_gated_state = l.second > 0 ? grad_gated.data() + b * H : nullptr;
    };

    for (std::size_t k = d.steps; k-- > 0;) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        const bool last = k + 1 == d.steps;
        const std::size_t next_at = last ? 0 : step_at(k + 1, d.steps, saved.reverse);
        for (std::size_t b = 0; b < B; ++b) {
            point(t, next_at, last, b);
            if (saved.row_active(t, b)) {
                if (grad_output) {
                    const T* dout = grad_output + (t * B + b) * P;
                    T* dh = grad_state[0].data() + b * P;
                    lanes<T>(P, [&](std::size_t j, auto tag) {
                        using V = decltype(tag);
                        store_lane(dh + j, load_lane<V>(dh + j) + load_lane<V>(dout + j));
                    });
                }
                if (l.second > 0) saved.rules->backward_second(row);
                continue;
            }
            // A finished row: the state gradients pass through unchanged, nothing reaches the weights.
            std::fill_n(row.grad_gates, GH, T(0));
            if (row.grad_recurrent) std::fill_n(row.grad_recurrent, d.recurrent_width(), T(0));
            if (row.grad_second) std::fill_n(row.grad_second, d.second_width(), T(0));
        }
        if (second_backward) second_backward->operator()(grad_second.data() + t * B * d.second_width(), grad_gated.data());
        if (projection_backward) {
            // dh' moves to the step's slot; what stays in grad_state[0] is dL/dh before the step,
            // whose direct part is zero (h enters only through the recurrent product).
            T* dh_step = grad_projected.data() + t * B * P;
            for (std::size_t b = 0; b < B; ++b) {
                T* dh = grad_state[0].data() + b * P;
                if (!saved.row_active(t, b)) {
                    std::fill_n(dh_step + b * P, P, T(0));
                    continue;
                }
                std::copy_n(dh, P, dh_step + b * P);
                std::fill_n(dh, P, T(0));
            }
            projection_backward->operator()(dh_step, grad_unprojected.data());
        }
        for (std::size_t b = 0; b < B; ++b)
            if (saved.row_active(t, b)) {
                point(t, next_at, last, b);
                saved.rules->backward(row);
            }
        // dh_{t-1} += dR W_hh; after the first step only the initial state's gradient would remain.
        if (recurrent_backward && (k > 0 || need_h0 || saved.probe))
            recurrent_backward->operator()(dgh + t * B * d.recurrent_stride(), grad_state[0].data());
        if (saved.probe)
            for (std::size_t s = 0; s < S; ++s)
                std::copy_n(grad_state[s].data(), B * d.width(s),
                            saved.probe->grad_states_before[s].data() + t * B * d.width(s));
    }
    if (saved.probe) std::copy_n(dgx, TB * GH, saved.probe->grad_gates.data());

    Gradients<T> gradients(ctx.num_inputs());
    if (ctx.needs_input_grad(in.x)) {
        xt::xarray<T> dx = xt::xarray<T>::from_shape({d.steps, B, I});
        blas::gemm(false, false, TB, I, GH, T(1), dgx, GH, w_ih, I, T(0), dx.data(), I);
        gradients[in.x] = Tensor<T>(std::move(dx));
    }
    if (ctx.needs_input_grad(in.weight_ih)) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape({GH, I});
        blas::gemm(true, false, GH, I, TB, T(1), dgx, GH, x, I, T(0), dw.data(), I);
        gradients[in.weight_ih] = Tensor<T>(std::move(dw));
    }
    if (in.bias_ih >= 0 && ctx.needs_input_grad(in.bias_ih)) {
        xt::xarray<T> db = xt::xarray<T>::from_shape({GH});
        column_sums(dgx, TB, GH, GH, db.data());
        gradients[in.bias_ih] = Tensor<T>(std::move(db));
    }
    const std::size_t RH = d.recurrent_width();
    if (in.weight_hh >= 0 && ctx.needs_input_grad(in.weight_hh)) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape({RH, P});
        blas::gemm(true, false, RH, P, TB, T(1), dgh, d.recurrent_stride(), saved.states[0].data(), P, T(0), dw.data(), P);
        gradients[in.weight_hh] = Tensor<T>(std::move(dw));
    }
    if (in.bias_hh >= 0 && ctx.needs_input_grad(in.bias_hh)) {
        xt::xarray<T> db = xt::xarray<T>::from_shape({RH});
        if (!d.separate() && RH == GH && gradients[in.bias_ih].defined()) db = gradients[in.bias_ih].value();
        else column_sums(dgh, TB, RH, d.recurrent_stride(), db.data());
        gradients[in.bias_hh] = Tensor<T>(std::move(db));
    }
    if (in.weight_second >= 0 && ctx.needs_input_grad(in.weight_second)) {
        const std::size_t R2H = d.second_width();
        xt::xarray<T> dw = xt::xarray<T>::from_shape({R2H, H});
        blas::gemm(true, false, R2H, H, TB, T(1), grad_second.data(), R2H, saved.gated.data(), H, T(0), dw.data(), H);
        gradients[in.weight_second] = Tensor<T>(std::move(dw));
    }
    if (in.weight_projection >= 0 && ctx.needs_input_grad(in.weight_projection)) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape({P, H});
        blas::gemm(true, false, P, H, TB, T(1), grad_projected.data(), P, saved.unprojected.data(), H, T(0), dw.data(), H);
        gradients[in.weight_projection] = Tensor<T>(std::move(dw));
    }
    for (std::size_t u = 0; u < l.units; ++u)
        if (ctx.needs_input_grad(in.units + u)) gradients[in.units + u] = Tensor<T>(std::move(grad_units[u]));
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
                                              std::shared_ptr<const void> owner) {
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
    std::vector<Tensor<T>> inputs{input, w.weight_ih};
    auto add_input = [&](const Tensor<T>& tensor) {
        inputs.push_back(tensor);
        return int(inputs.size()) - 1;
    };
    if (w.bias_ih.defined()) index.bias_ih = add_input(w.bias_ih);
    if (d.layout.recurrent > 0) index.weight_hh = add_input(w.weight_hh);
    if (w.bias_hh.defined()) index.bias_hh = add_input(w.bias_hh);
    if (d.layout.second > 0) index.weight_second = add_input(w.weight_second);
    if (d.layout.projection) index.weight_projection = add_input(w.weight_projection);
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
                               const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name) {
    return detail::run_sequence_probed<T>(rules, input, initial_state, lengths, reverse, name, nullptr);
}

template SequenceResult<float> detail::run_sequence_probed(const CellRules<float>&, const Tensor<float>&,
                                                           const std::vector<Tensor<float>>&,
                                                           const std::vector<std::int64_t>&, bool, const std::string&,
                                                           std::shared_ptr<detail::SequenceProbe<float>>,
                                                           std::shared_ptr<const void>);
template SequenceResult<double> detail::run_sequence_probed(const CellRules<double>&, const Tensor<double>&,
                                                            const std::vector<Tensor<double>>&,
                                                            const std::vector<std::int64_t>&, bool, const std::string&,
                                                            std::shared_ptr<detail::SequenceProbe<double>>,
                                                            std::shared_ptr<const void>);
template SequenceResult<float> run_sequence(const CellRules<float>&, const Tensor<float>&, const std::vector<Tensor<float>>&,
                                            const std::vector<std::int64_t>&, bool, const std::string&);
template SequenceResult<double> run_sequence(const CellRules<double>&, const Tensor<double>&,
                                             const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&, bool,
                                             const std::string&);

}  // namespace rw::nn::fused
