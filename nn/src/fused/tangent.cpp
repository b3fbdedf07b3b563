// The fused driver's tangent sweeps (tangent.hpp): forward mode and the tangents of the backward
// through a cell's optional tangent rules (cell_rules.hpp), with the GEMMs kept fused.
//
// Note [Tangent sweeps]: the fused op is F: (x, W_ih, b_ih, W_hh, b_hh, h0) -> (y, h_n) and its
// backward B(θ, dy) = ∇_θ <dy, F(θ)>. Forward mode needs J_F θ̇ (tangent_forward); forward-over-
// reverse needs B and its JVP in the direction (θ̇, ḋy) (tangent_backward); the double backward
// is the same two: with cotangent u on B's outputs, ∂/∂dy = J_F u (tangent_forward with θ̇ = u) and
// ∂/∂θ = ∇²<dy, F> u (tangent_backward with θ̇ = u, ḋy = 0; the Hessian is symmetric).
//   tangent_forward: the pre-activations' tangents ẋ W_ih^T + x Ẇ_ih^T + ḃ of all steps and
//     h Ẇ_hh^T of all steps (the states before every step are saved) as three GEMMs over T*B rows;
//     per step only ḣ W_hh^T (packed once) and the cell's forward_tangent.
//   tangent_backward: the primal backward and its tangent step by step from the last, the
//     gradients of the pre-activations kept side by side as [ḋG | dG] per row so that
//     ḋh += ḋG W_hh + dG Ẇ_hh is one GEMM with K doubled against [W_hh; Ẇ_hh], and ḋx likewise
//     over all steps; ḋW = ḋG^T X + dG^T Ẋ summed as the driver sums dW (transposed when tall:
//     X^T [ḋG | dG] as one GEMM with M doubled measured slower than two, see the README's figures).
// The sweeps run one row group (no threads) over a forward that kept every step.

#include "tangent.hpp"
#include "weight_gradients.hpp"

#include <algorithm>
#include <atomic>
#include <memory>

#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>

#include <rewind/autograd/gemm.hpp>

namespace rw::nn::fused::driver {

namespace {

template <class T>
const T* at(const std::vector<const T*>& pointers, int index) {
    return index >= 0 && std::size_t(index) < pointers.size() ? pointers[std::size_t(index)] : nullptr;
}

// [a; b] as one [2 rows, cols] matrix: the stacked weights of the doubled-K products.
template <class T>
Buffer<T> stacked(const T* a, const T* b, std::size_t rows, std::size_t cols) {
    Buffer<T> out(2 * rows * cols);
    std::copy_n(a, rows * cols, out.data());
    std::copy_n(b, rows * cols, out.data() + rows * cols);
    return out;
}

template <class T>
Tensor<T> tensor_of(const T* data, Shape shape) {
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape);
    std::copy_n(data, value.size(), value.data());
    return Tensor<T>(std::move(value));
}

// The buffers one row of one step reads and writes, primal and tangent, in both sweeps: the
// states before the step, after it (the next step's "before", or the finals after the last
// processed step), the saved buffers and the gate row.
template <class T>
class RowPointers {
public:
    RowPointers(Saved<T>& saved, ForwardTangents<T>& ft)
        : saved_(saved), ft_(ft), S_(saved.dims.layout.states), E_(saved.dims.layout.saved) {
        state.resize(S_), tstate.resize(S_), next.resize(S_), tnext.resize(S_), extra.resize(E_), textra.resize(E_);
    }
    // Row b of step t; t_next: the step after it in processing order, unless `last`.
    void point(std::size_t t, std::size_t t_next, bool last, std::size_t b) {
        const Dims& d = saved_.dims;
        const std::size_t B = d.batch, H = d.hidden, at_row = t * B + b;
        for (std::size_t s = 0; s < S_; ++s) {
            const std::size_t W = d.width(s);
            state[s] = saved_.states[s].data() + at_row * W;
            tstate[s] = ft_.states[s].data() + at_row * W;
            next[s] = (last ? saved_.finals[s].data() : saved_.states[s].data() + t_next * B * W) + b * W;
            tnext[s] = (last ? ft_.finals[s].data() : ft_.states[s].data() + t_next * B * W) + b * W;
        }
        for (std::size_t e = 0; e < E_; ++e) {
            extra[e] = saved_.extra[e].data() + at_row * H;
            textra[e] = ft_.extra[e].data() + at_row * H;
        }
        gates = saved_.gates.data() + at_row * d.gate_width();
        tgates = ft_.gates.data() + at_row * d.gate_width();
    }
    // Points a row's fields at these buffers once (the vectors keep their addresses).
    template <class Row>
    void attach(Row& row) const {
        row.hidden = saved_.dims.hidden;
        row.output = saved_.dims.output;
        row.state = state.data();
        row.next_state = next.data();
        row.saved = extra.data();
        row.tangent_state = tstate.data();
        row.tangent_next_state = tnext.data();
        row.tangent_saved = textra.data();
    }

    std::vector<const T*> state, tstate;
    std::vector<T*> next, tnext, extra, textra;
    T* gates = nullptr;
    T* tgates = nullptr;

private:
    Saved<T>& saved_;
    ForwardTangents<T>& ft_;
    std::size_t S_, E_;
};

}  // namespace

template <class T>
std::string tangent_sweep_refusal(const Saved<T>& saved) {
    const CellLayout& l = saved.dims.layout;
    if (!saved.rules->has_tangent_rules()) return "the cell's fused rules have no tangent rules";
    if (l.units > 0) return "the fast tangent sweeps do not cover per-unit vectors";
    if (l.second > 0) return "the fast tangent sweeps do not cover two-stage cells";
    if (l.projection) return "the fast tangent sweeps do not cover an output projection";
    if (saved.inference) return "the forward kept nothing (inference)";
    if (saved.recomputing()) return "the fast tangent sweeps do not cover recomputation";
    return "";
}

template <class T>
ForwardTangents<T> tangent_forward(Saved<T>& saved, const std::vector<const T*>& values,
                                   const std::vector<const T*>& tangents) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, H = d.hidden, P = d.output, I = d.input, GH = d.gate_width(),
                      RH = d.recurrent_width(), S = l.states, TB = d.steps * B;
    const bool separate = d.separate();
    ForwardTangents<T> ft;
    ft.gates = Buffer<T>(TB * GH);
    for (std::size_t s = 0; s < S; ++s) {
        ft.states.emplace_back(TB * d.width(s));
        ft.finals.emplace_back(B * d.width(s));
    }
    for (std::size_t e = 0; e < l.saved; ++e) ft.extra.emplace_back(TB * H);

    // The pre-activations' tangents of all steps, and h Ẇ_hh^T of all steps, before the loop.
    T* gates = ft.gates.data();
    fill_rows(gates, TB, GH, at(tangents, in.bias_ih), separate ? nullptr : at(tangents, in.bias_hh), RH);
    if (const T* dx = at(tangents, in.x))
        blas::gemm(false, true, TB, GH, I, T(1), dx, I, values[in.weight_ih], I, T(1), gates, GH);
    if (const T* dw = at(tangents, in.weight_ih))
        blas::gemm(false, true, TB, GH, I, T(1), values[in.x], I, dw, I, T(1), gates, GH);
    Buffer<T> recurrent_buffer = separate ? Buffer<T>(TB * RH) : Buffer<T>();
    T* recurrent = separate ? recurrent_buffer.data() : gates;
    const std::size_t stride = separate ? RH : GH;
    const T* w_hh = at(values, in.weight_hh);
    if (const T* dw = at(tangents, in.weight_hh))
        blas::gemm(false, true, TB, RH, P, T(1), saved.states[0].data(), P, dw, P, separate ? T(0) : T(1), recurrent,
                   stride);
    else if (separate)
        std::fill_n(recurrent, TB * RH, T(0));

    const std::size_t first = step_at(0, d.steps, saved.reverse);
    for (std::size_t s = 0; s < S; ++s) {
        const std::size_t W = d.width(s);
        T* into = ft.states[s].data() + first * B * W;
        if (const T* h0 = at(tangents, in.states + int(s))) std::copy_n(h0, B * W, into);
        else std::fill_n(into, B * W, T(0));
    }
    std::unique_ptr<blas::PackedGemm<T>> product;
    if (l.recurrent > 0) product = std::make_unique<blas::PackedGemm<T>>(true, B, RH, P, w_hh, P, T(1), P, stride, d.steps);

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, P});
    RowPointers<T> at_row(saved, ft);
    ForwardTangentRow<T> row;
    at_row.attach(row);
    row.bias_hh = separate ? at(values, in.bias_hh) : nullptr;
    row.tangent_bias_hh = separate ? at(tangents, in.bias_hh) : nullptr;
    for (std::size_t k = 0; k < d.steps; ++k) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        const bool last = k + 1 == d.steps;
        const std::size_t t_next = last ? 0 : step_at(k + 1, d.steps, saved.reverse);
        if (product) product->operator()(ft.states[0].data() + t * B * P, recurrent + t * B * stride);
        for (std::size_t b = 0; b < B; ++b) {
            at_row.point(t, t_next, last, b);
            T* out = output.data() + (t * B + b) * P;
            if (!saved.row_active(t, b)) {  // a finished row keeps its state and outputs zeros
                for (std::size_t s = 0; s < S; ++s) std::copy_n(at_row.tstate[s], d.width(s), at_row.tnext[s]);
                std::fill_n(out, P, T(0));
                continue;
            }
            row.gates = at_row.gates;
            row.tangent_gates = at_row.tgates;
            row.tangent_recurrent = separate ? recurrent + (t * B + b) * RH : nullptr;
            saved.rules->forward_tangent(row);
            std::copy_n(at_row.tnext[0], P, out);
        }
    }
    ft.output = Tensor<T>(std::move(output));
    for (std::size_t s = 0; s < S; ++s) ft.final_state.push_back(tensor_of(ft.finals[s].data(), {B, d.width(s)}));
    return ft;
}

template <class T>
TangentGradients<T> tangent_backward(Saved<T>& saved, const std::vector<const T*>& values,
                                     const std::vector<const T*>& tangents, ForwardTangents<T>& ft,
                                     const std::vector<const T*>& grad_outputs,
                                     const std::vector<const T*>& grad_output_tangents,
                                     const std::vector<bool>& needed, bool with_gradients) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, P = d.output, I = d.input, GH = d.gate_width(),
                      RH = d.recurrent_width(), S = l.states, TB = d.steps * B;
    const bool separate = d.separate();
    // [ḋG | dG] per row; the separate product's [ḋR | dR] likewise. dR is dG's first R blocks when
    // the product adds into the gates, and then [ḋR | dR] is contiguous only when R = G.
    Buffer<T> grad_gates(TB * 2 * GH), grad_recurrent = separate ? Buffer<T>(TB * 2 * RH) : Buffer<T>();
    T* gg = grad_gates.data();
    T* rr = separate ? grad_recurrent.data() : gg;
    const std::size_t g2 = 2 * GH, r2 = separate ? 2 * RH : 2 * GH, r_primal = separate ? RH : GH;
    const bool contiguous = separate || l.recurrent == l.gates;

    std::vector<xt::xarray<T>> dstate, tdstate;
    for (std::size_t s = 0; s < S; ++s) {
        const std::size_t W = d.width(s);
        dstate.push_back(xt::zeros<T>({B, W}));
        tdstate.push_back(xt::zeros<T>({B, W}));
        if (const T* g = at(grad_outputs, 1 + int(s))) std::copy_n(g, B * W, dstate[s].data());
        if (const T* g = at(grad_output_tangents, 1 + int(s))) std::copy_n(g, B * W, tdstate[s].data());
    }
    const T* dy = at(grad_outputs, 0);
    const T* tdy = at(grad_output_tangents, 0);
    const T* w_hh = at(values, in.weight_hh);
    const T* tw_hh = at(tangents, in.weight_hh);
    Buffer<T> w_hh_stack = tw_hh && contiguous ? stacked(w_hh, tw_hh, RH, P) : Buffer<T>();
    // W_hh and [W_hh; Ẇ_hh] every step: packed once (gemm.hpp), as the first-order backward does.
    std::unique_ptr<blas::PackedGemm<T>> primal_product, stacked_product;
    if (l.recurrent > 0)
        primal_product = std::make_unique<blas::PackedGemm<T>>(false, B, P, RH, w_hh, P, T(1), r2, P, d.steps);
    if (w_hh_stack.data())
        stacked_product =
            std::make_unique<blas::PackedGemm<T>>(false, B, P, 2 * RH, w_hh_stack.data(), P, T(1), r2, P, d.steps);

    RowPointers<T> at_row(saved, ft);
    std::vector<T*> grad(S), tgrad(S);
    BackwardTangentRow<T> row;
    at_row.attach(row);
    row.grad_state = grad.data();
    row.tangent_grad_state = tgrad.data();
    for (std::size_t k = d.steps; k-- > 0;) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        const bool last = k + 1 == d.steps;
        const std::size_t t_next = last ? 0 : step_at(k + 1, d.steps, saved.reverse);
        for (std::size_t b = 0; b < B; ++b) {
            const std::size_t row_at = t * B + b;
            T* g_row = gg + row_at * g2;
            T* r_row = rr + row_at * r2;
            if (!saved.row_active(t, b)) {  // the state gradients pass through, nothing reaches the weights
                std::fill_n(g_row, g2, T(0));
                if (separate) std::fill_n(r_row, r2, T(0));
                continue;
            }
            at_row.point(t, t_next, last, b);
            for (std::size_t s = 0; s < S; ++s) {
                grad[s] = dstate[s].data() + b * d.width(s);
                tgrad[s] = tdstate[s].data() + b * d.width(s);
            }
            for (std::size_t p = 0; p < P; ++p) {
                if (dy) grad[0][p] += dy[row_at * P + p];
                if (tdy) tgrad[0][p] += tdy[row_at * P + p];
            }
            row.gates = at_row.gates;
            row.tangent_gates = at_row.tgates;
            row.tangent_grad_gates = g_row;
            row.grad_gates = g_row + GH;
            row.tangent_grad_recurrent = separate ? r_row : nullptr;
            row.grad_recurrent = separate ? r_row + RH : nullptr;
            saved.rules->backward_tangent(row);
            saved.rules->backward(row);
        }
        if (l.recurrent == 0) continue;
        // dh += dR W_hh; ḋh += ḋR W_hh + dR Ẇ_hh (one GEMM against [W_hh; Ẇ_hh] when contiguous).
        const T* r_step = rr + t * B * r2;
        primal_product->operator()(r_step + r_primal, dstate[0].data());
        if (stacked_product) {
            stacked_product->operator()(r_step, tdstate[0].data());
        } else {
            blas::gemm(false, false, B, P, RH, T(1), r_step, r2, w_hh, P, T(1), tdstate[0].data(), P);
            if (tw_hh)
                blas::gemm(false, false, B, P, RH, T(1), r_step + r_primal, r2, tw_hh, P, T(1), tdstate[0].data(), P);
        }
    }

    TangentGradients<T> out;
    out.gradient.resize(values.size());
    out.tangent.resize(values.size());
    auto wanted = [&](int index) { return index >= 0 && std::size_t(index) < needed.size() && needed[index]; };
    auto give = [&](int index, xt::xarray<T>&& gradient, xt::xarray<T>&& tangent) {
        if (with_gradients) out.gradient[index] = Tensor<T>(std::move(gradient));
        out.tangent[index] = Tensor<T>(std::move(tangent));
    };
    // The primal products, skipped when only the tangents are wanted.
    auto primal_sum = [&](xt::xarray<T>& into, std::size_t rows, std::size_t cols) {
        if (!with_gradients) return std::unique_ptr<WeightGradient<T>>();
        into = xt::xarray<T>::from_shape({rows, cols});
        return std::make_unique<WeightGradient<T>>(into, rows, cols);
    };
    const T* x = values[in.x];
    const T* w_ih = values[in.weight_ih];
    const T* tx = at(tangents, in.x);
    const T* tw_ih = at(tangents, in.weight_ih);
    if (wanted(in.x)) {
        xt::xarray<T> dx = with_gradients ? xt::xarray<T>::from_shape({d.steps, B, I}) : xt::xarray<T>();
        xt::xarray<T> tdx = xt::xarray<T>::from_shape({d.steps, B, I});
        if (with_gradients) blas::gemm(false, false, TB, I, GH, T(1), gg + GH, g2, w_ih, I, T(0), dx.data(), I);
        if (tw_ih) {
            Buffer<T> w_ih_stack = stacked(w_ih, tw_ih, GH, I);
            blas::gemm(false, false, TB, I, g2, T(1), gg, g2, w_ih_stack.data(), I, T(0), tdx.data(), I);
        } else {
            blas::gemm(false, false, TB, I, GH, T(1), gg, g2, w_ih, I, T(0), tdx.data(), I);
        }
        give(in.x, std::move(dx), std::move(tdx));
    }
    // dW = dG^T X and ḋW = ḋG^T X + dG^T Ẋ, each summed as the driver sums weight gradients
    // (Note [Transposed weight gradients]: tall ones as X^T dG, turned once).
    auto weight = [&](int index, const T* grads, std::size_t ld, std::size_t rows, std::size_t offset, const T* input,
                      const T* tinput, std::size_t cols) {
        if (!wanted(index)) return;
        xt::xarray<T> dw, tdw = xt::xarray<T>::from_shape({rows, cols});
        WeightGradient<T> tangent(tdw, rows, cols);
        if (auto primal = primal_sum(dw, rows, cols)) {
            primal->add(grads + offset, ld, input, cols, TB, T(0));
            primal->finish();
        }
        tangent.add(grads, ld, input, cols, TB, T(0));
        if (tinput) tangent.add(grads + offset, ld, tinput, cols, TB, T(1));
        tangent.finish();
        give(index, std::move(dw), std::move(tdw));
    };
    const T* h = saved.states[0].data();
    const T* th = ft.states[0].data();
    const std::size_t IP = I + P;
    if (!separate && RH == GH && wanted(in.weight_ih) && wanted(in.weight_hh) && WeightGradient<T>::transposes(GH, IP)) {
        // As the first-order backward (Note [Joint weight product]): [dW_ih | dW_hh] = dG^T [x | h],
        // [ḋW_ih | ḋW_hh] = ḋG^T [x | h] + dG^T [ẋ | ḣ] (dG^T ḣ alone when ẋ is zero).
        Buffer<T> joined(TB * IP), tjoined = tx ? Buffer<T>(TB * IP) : Buffer<T>();
        for (std::size_t r = 0; r < TB; ++r) {
            std::copy_n(x + r * I, I, joined.data() + r * IP);
            std::copy_n(h + r * P, P, joined.data() + r * IP + I);
            if (!tx) continue;
            std::copy_n(tx + r * I, I, tjoined.data() + r * IP);
            std::copy_n(th + r * P, P, tjoined.data() + r * IP + I);
        }
        xt::xarray<T> dw, tdw = xt::xarray<T>::from_shape({GH, IP});
        xt::xarray<T> tdw_hh = tx ? xt::xarray<T>() : xt::xarray<T>::from_shape({GH, P});
        WeightGradient<T> tangent(tdw, GH, IP);
        if (auto primal = primal_sum(dw, GH, IP)) {
            primal->add(gg + GH, g2, joined.data(), IP, TB, T(0));
            primal->finish();
        }
        tangent.add(gg, g2, joined.data(), IP, TB, T(0));
        if (tx) {
            tangent.add(gg + GH, g2, tjoined.data(), IP, TB, T(1));
        } else {
            WeightGradient<T> hh(tdw_hh, GH, P);
            hh.add(gg + GH, g2, th, P, TB, T(0));
            hh.finish();
        }
        tangent.finish();
        auto split = [&](const xt::xarray<T>& from, std::size_t offset, std::size_t cols, const T* extra) {
            xt::xarray<T> part = xt::xarray<T>::from_shape({GH, cols});
            for (std::size_t g = 0; g < GH; ++g) {
                std::copy_n(from.data() + g * IP + offset, cols, part.data() + g * cols);
                if (extra)
                    for (std::size_t c = 0; c < cols; ++c) part(g, c) += extra[g * cols + c];
            }
            return part;
        };
        give(in.weight_ih, with_gradients ? split(dw, 0, I, nullptr) : xt::xarray<T>(), split(tdw, 0, I, nullptr));
        give(in.weight_hh, with_gradients ? split(dw, I, P, nullptr) : xt::xarray<T>(),
             split(tdw, I, P, tx ? nullptr : tdw_hh.data()));
    } else {
        weight(in.weight_ih, gg, g2, GH, GH, x, tx, I);
        if (l.recurrent > 0) weight(in.weight_hh, rr, r2, RH, r_primal, h, th, P);
    }
    // The biases: column sums of both halves.
    auto bias = [&](int index, const T* grads, std::size_t ld, std::size_t width, std::size_t offset) {
        if (!wanted(index)) return;
        xt::xarray<T> db = xt::xarray<T>::from_shape({width}), tdb = xt::xarray<T>::from_shape({width});
        Buffer<T> scratch(width);
        if (with_gradients) column_sums(grads + offset, TB, width, ld, false, db.data(), scratch.data());
        column_sums(grads, TB, width, ld, false, tdb.data(), scratch.data());
        give(index, std::move(db), std::move(tdb));
    };
    bias(in.bias_ih, gg, g2, GH, GH);
    bias(in.bias_hh, rr, r2, RH, r_primal);
    for (std::size_t s = 0; s < S; ++s)
        if (wanted(in.states + int(s))) give(in.states + int(s), std::move(dstate[s]), std::move(tdstate[s]));
    return out;
}

namespace {
std::atomic<std::size_t> sweeps_run{0}, forward_sweeps{0};
std::atomic<bool> sweeps_enabled{true};

// The same tensors (not equal values): both undefined, or one handle's.
template <class T>
bool same_tensors(const std::vector<Tensor<T>>& a, const std::vector<Tensor<T>>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].defined() != b[i].defined() || (a[i].defined() && !a[i].same(b[i]))) return false;
    return true;
}

template <class T>
std::vector<const T*> pointers(const std::vector<Tensor<T>>& tensors, std::size_t count) {
    std::vector<const T*> out(count, nullptr);
    for (std::size_t i = 0; i < std::min(count, tensors.size()); ++i)
        if (tensors[i].defined()) out[i] = tensors[i].value().data();
    return out;
}
}  // namespace

std::size_t tangent_sweeps_run() { return sweeps_run.load(); }
std::size_t forward_sweeps_run() { return forward_sweeps.load(); }
void set_tangent_sweeps_enabled(bool enabled) { sweeps_enabled.store(enabled); }
bool tangent_sweeps_enabled() { return sweeps_enabled.load(); }

template <class T>
bool tangent_directional(Saved<T>& saved, const std::vector<Tensor<T>>& inputs, const std::vector<Tensor<T>>& grad_outputs,
                         const std::vector<Tensor<T>>& v, const std::vector<Tensor<T>>& u, bool want_jvp,
                         const std::vector<bool>& want_gradients, std::vector<Tensor<T>>& jvp,
                         std::vector<Tensor<T>>& gradients) {
    if (!sweeps_enabled.load() || !tangent_sweep_refusal(saved).empty()) return false;
    const std::size_t n = inputs.size(), m = 1 + saved.dims.layout.states;
    const std::vector<const T*> values = pointers(inputs, n), tangents = pointers(v, n);
    bool any = false;
    for (bool w : want_gradients) any = any || w;
    // Note [Forward sweep kept]: forward-over-reverse (rw::hvp) asks twice along the same v: the
    // op's forward rule for J v, then its backward for the gradients' tangents, which read every
    // step's forward tangents again. The first call keeps its sweep in `saved` with the tangent
    // tensors it went along (held, so no other tensor can take their place); the second reuses it
    // when its v is those same tensors. The sweep depends on nothing else (the op's inputs are
    // fixed and the backward sweep only reads it).
    std::shared_ptr<ForwardTangents<T>> ft;
    if (saved.forward_sweep && same_tensors(saved.forward_sweep_along, v)) {
        ft = saved.forward_sweep;
    } else {
        ft = std::make_shared<ForwardTangents<T>>(tangent_forward(saved, values, tangents));
        ++forward_sweeps;
        if (want_jvp && !any) {
            saved.forward_sweep = ft;
            saved.forward_sweep_along = v;
        }
    }
    jvp.assign(m, Tensor<T>());
    gradients.assign(n, Tensor<T>());
    if (want_jvp) {
        jvp[0] = ft->output;
        for (std::size_t s = 0; s + 1 < m; ++s) jvp[1 + s] = ft->final_state[s];
    }
    if (any) {
        // The gradients themselves came from the fused backward: only their tangents are computed.
        TangentGradients<T> g = tangent_backward(saved, values, tangents, *ft, pointers(grad_outputs, m), pointers(u, m),
                                                 want_gradients, false);
        gradients = std::move(g.tangent);
    }
    ++sweeps_run;
    return true;
}


template std::string tangent_sweep_refusal(const Saved<float>&);
template std::string tangent_sweep_refusal(const Saved<double>&);
template ForwardTangents<float> tangent_forward(Saved<float>&, const std::vector<const float*>&,
                                                const std::vector<const float*>&);
template ForwardTangents<double> tangent_forward(Saved<double>&, const std::vector<const double*>&,
                                                 const std::vector<const double*>&);
template TangentGradients<float> tangent_backward(Saved<float>&, const std::vector<const float*>&,
                                                  const std::vector<const float*>&, ForwardTangents<float>&,
                                                  const std::vector<const float*>&, const std::vector<const float*>&,
                                                  const std::vector<bool>&, bool);
template TangentGradients<double> tangent_backward(Saved<double>&, const std::vector<const double*>&,
                                                   const std::vector<const double*>&, ForwardTangents<double>&,
                                                   const std::vector<const double*>&,
                                                   const std::vector<const double*>&, const std::vector<bool>&,
                                                   bool);
template bool tangent_directional(Saved<float>&, const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&,
                                  const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&, bool,
                                  const std::vector<bool>&, std::vector<Tensor<float>>&, std::vector<Tensor<float>>&);
template bool tangent_directional(Saved<double>&, const std::vector<Tensor<double>>&,
                                  const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&,
                                  const std::vector<Tensor<double>>&, bool, const std::vector<bool>&,
                                  std::vector<Tensor<double>>&, std::vector<Tensor<double>>&);

}  // namespace rw::nn::fused::driver
