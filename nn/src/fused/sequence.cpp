// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// the saved buffers and the tape op around a cell's point-wise rules (cell_rules.hpp).

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/fused/lanes.hpp"
#include "rewind/nn/layers/cell.hpp"
#include "probe.hpp"

namespace rw::nn::fused {

template <class T>
void CellRules<T>::forward_second(const ForwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but forward_second() is not written");
}

template <class T>
void CellRules<T>::backward_second(const BackwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but backward_second() is not written");
}

template <class T>
std::vector<std::string> CellRules<T>::gate_names() const {
    std::vector<std::string> names;
    for (std::size_t g = 0; g < layout().gates; ++g) names.push_back(fmt::format("gate {}", g));
    return names;
}

double forward_flops_per_step(const CellLayout& layout, std::size_t batch, std::size_t input, std::size_t hidden) {
    const double B = double(batch), H = double(hidden);
    return 2.0 * B * H * (double(layout.gates) * double(input) + double(layout.recurrent + layout.second) * H);
}

std::size_t saved_bytes_per_step(const CellLayout& layout, std::size_t batch, std::size_t hidden,
                                 std::size_t element_size, bool with_lengths) {
    // gate buffer [B, G*H], the states before the step, the rule's own buffers and q (two-stage).
    const std::size_t per_row =
        (layout.gates + layout.states + layout.saved + (layout.second > 0 ? 1 : 0)) * hidden;
    return batch * per_row * element_size + (with_lengths ? batch : 0);
}

namespace {

// Uninitialised, 64-byte aligned storage: the buffers are written before they are read, and
// zeroing tens of megabytes for nothing would show up in the timings.
template <class T>
class Buffer {
public:
    Buffer() = default;
    explicit Buffer(std::size_t count) : count_(count) {
        if (count == 0) return;
        if (count > (std::numeric_limits<std::size_t>::max() - 63) / sizeof(T)) throw std::bad_alloc();
        const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
        data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
        if (!data_) throw std::bad_alloc();
    }
    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }

private:
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T, Free> data_;
    std::size_t count_ = 0;
};

struct Dims {
    std::size_t steps = 0, batch = 0, input = 0, hidden = 0;
    CellLayout layout;
    std::size_t gate_width() const { return layout.gates * hidden; }
    std::size_t recurrent_width() const { return layout.recurrent * hidden; }
    std::size_t second_width() const { return layout.second * hidden; }
    bool separate() const { return layout.recurrent > 0 && !layout.recurrent_into_gates; }
    // The row stride of dL/d(stage-1 product): the gate buffer's when the product adds to it.
    std::size_t recurrent_stride() const { return separate() ? recurrent_width() : gate_width(); }
};

// Tape-op input positions: x, weights present in the layout, units, initial states.
struct InputIndex {
    int x = 0, weight_ih = 1, bias_ih = -1, weight_hh = -1, bias_hh = -1, weight_second = -1, units = -1, states = -1;
};

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
    std::vector<Buffer<T>> states;    // per state: [T, B, H] before step t
    std::vector<Buffer<T>> finals;    // per state: [B, H] after the last processed step
    std::vector<Buffer<T>> extra;     // per saved buffer: [T, B, H]
    Buffer<T> gated;                  // two-stage: q [T, B, H]
    std::vector<std::uint8_t> active;  // [T, B], empty when every row runs every step
    std::vector<bool> all_active;      // per step
    std::shared_ptr<detail::SequenceProbe<T>> probe;  // null unless checking

    bool row_active(std::size_t t, std::size_t b) const {
        return active.empty() || all_active[t] || active[t * dims.batch + b];
    }
};

std::size_t step_at(std::size_t k, std::size_t steps, bool reverse) { return reverse ? steps - 1 - k : k; }

// sums[j] = sum over rows of matrix[row, j] for j < cols; rows `stride` apart.
template <class T>
void column_sums(const T* matrix, std::size_t rows, std::size_t cols, std::size_t stride, T* sums) {
    std::fill_n(sums, cols, T(0));
    for (std::size_t r = 0; r < rows; ++r) {
        const T* row = matrix + r * stride;
        lanes<T>(cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(sums + j, load_lane<V>(sums + j) + load_lane<V>(row + j));
        });
    }
}

// out [rows, cols] = a (+ b on the first b_cols columns) on every row; a or b may be null.
template <class T>
void fill_rows(T* out, std::size_t rows, std::size_t cols, const T* a, const T* b, std::size_t b_cols) {
    if (rows == 0) return;
    if (a) std::copy_n(a, cols, out);
    else std::fill_n(out, cols, T(0));
    if (b)
        lanes<T>(b_cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(out + j, load_lane<V>(out + j) + load_lane<V>(b + j));
        });
    for (std::size_t r = 1; r < rows; ++r) std::memcpy(out + r * cols, out, cols * sizeof(T));
}

template <class T>
void check_shape(const std::string& op, const char* name, const Tensor<T>& tensor, const Shape& expected) {
    if (!tensor.defined()) throw std::invalid_argument(fmt::format("{}: the cell's {} is missing", op, name));
    if (tensor.shape() != expected)
        throw_shape_error(op, fmt::format("{} has the wrong shape for the cell's layout", name), tensor.shape(), expected);
}

template <class T>
void check_arguments(const std::string& op, const CellWeights<T>& w, const Tensor<T>& input,
                     const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths, Dims& d) {
    const CellLayout& l = d.layout;
    if (input.dim() != 3) throw_shape_error(op, "expects a 3-D input [T, B, input_size]", input.shape());
    if (l.gates == 0 || l.states == 0) throw std::invalid_argument(op + ": the layout needs at least one gate block and one state");
    if (l.recurrent_into_gates && l.recurrent > l.gates)
        throw std::invalid_argument(fmt::format("{}: {} recurrent blocks cannot add to {} gate blocks", op, l.recurrent, l.gates));
    d.steps = input.size(0);
    d.batch = input.size(1);
    d.input = input.size(2);
    if (!w.weight_ih.defined() || w.weight_ih.dim() != 2 || w.weight_ih.size(0) % l.gates != 0)
        throw std::invalid_argument(op + ": weight_ih must be [G*H, input_size]");
    d.hidden = w.weight_ih.size(0) / l.gates;
    const std::size_t H = d.hidden;
    // The largest buffers are [T, B, k*H]: the gates, the separate products, the saved states.
    // Checked before any is sized from these numbers (a product that wraps would make a buffer
    // smaller than the loops that fill it), in bytes, as every tensor's size is.
    const std::size_t widest = std::max({l.gates, l.recurrent, l.second, l.states + l.saved + 1});
    checked_element_count(op, {d.steps, d.batch, widest, H}, sizeof(T));
    check_shape(op, "weight_ih", w.weight_ih, Shape{l.gates * H, d.input});
    if (w.bias_ih.defined()) check_shape(op, "bias_ih", w.bias_ih, Shape{l.gates * H});
    if (l.recurrent > 0) check_shape(op, "weight_hh", w.weight_hh, Shape{l.recurrent * H, H});
    if (w.bias_hh.defined()) check_shape(op, "bias_hh", w.bias_hh, Shape{l.recurrent * H});
    if (l.second > 0) check_shape(op, "weight_second", w.weight_second, Shape{l.second * H, H});
    if (w.units.size() != l.units)
        throw std::invalid_argument(fmt::format("{}: {} per-unit vectors given, the layout has {}", op, w.units.size(), l.units));
    for (const auto& u : w.units) check_shape(op, "per-unit vector", u, Shape{H});
    if (initial_state.size() != l.states)
        throw std::invalid_argument(fmt::format("{}: {} initial state tensors given, expected {}", op,
                                                initial_state.size(), l.states));
    for (const auto& state : initial_state)
        if (state.shape() != Shape{d.batch, H}) throw_shape_error(op, "initial state must be [B, H]", state.shape());
    if (!lengths.empty()) {
        if (lengths.size() != d.batch)
            throw std::invalid_argument(fmt::format("{}: {} lengths for a batch of {}", op, lengths.size(), d.batch));
        for (auto length : lengths)
            if (length < 1 || length > std::int64_t(d.steps))
                throw std::invalid_argument(fmt::format("{}: length {} outside 1..{}", op, length, d.steps));
    }
    if (d.steps == 0 || d.batch == 0) throw_shape_error(op, "needs at least one step and one row", input.shape());
}

// ---- forward ----

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const CellWeights<T>& w, const T* x,
                                   const std::vector<const T*>& initial) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, H = d.hidden, GH = d.gate_width(), TB = d.steps * d.batch, S = l.states;
    const T* b_hh = w.bias_hh.defined() ? w.bias_hh.value().data() : nullptr;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, H});
    std::vector<xt::xarray<T>> finals(S);
    for (auto& f : finals) f = xt::xarray<T>::from_shape({B, H});

    // All input projections at once, on top of the biases outside the recurrence.
    saved.gates = Buffer<T>(TB * GH);
    T* gates = saved.gates.data();
    fill_rows(gates, TB, GH, w.bias_ih.defined() ? w.bias_ih.value().data() : nullptr,
              d.separate() ? nullptr : b_hh, d.recurrent_width());
    blas::gemm(false, true, TB, GH, d.input, T(1), x, d.input, w.weight_ih.value().data(), d.input, T(1), gates, GH);

    const std::size_t first = step_at(0, d.steps, saved.reverse);
    for (std::size_t s = 0; s < S; ++s) {
        saved.states.emplace_back(TB * H);
        std::copy_n(initial[s], B * H, saved.states[s].data() + first * B * H);
    }
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(TB * H);
    if (l.second > 0) saved.gated = Buffer<T>(TB * H);
    Buffer<T> recurrent_out, second_out;
    if (d.separate()) recurrent_out = Buffer<T>(B * d.recurrent_width());
    if (l.second > 0) second_out = Buffer<T>(B * d.second_width());
    std::vector<const T*> units;
    for (const auto& u : w.units) units.push_back(u.value().data());

    // h W_hh^T every step with the same W_hh: packed once for all steps (gemm.hpp).
    std::unique_ptr<blas::PackedGemm<T>> recurrent, second;
    if (l.recurrent > 0)
        recurrent = std::make_unique<blas::PackedGemm<T>>(true, B, d.recurrent_width(), H, w.weight_hh.value().data(), H,
                                                          d.separate() ? T(0) : T(1), H,
                                                          d.separate() ? d.recurrent_width() : GH, d.steps);
    if (l.second > 0)
        second = std::make_unique<blas::PackedGemm<T>>(true, B, d.second_width(), H, w.weight_second.value().data(), H,
                                                       T(0), H, d.second_width(), d.steps);

    std::vector<const T*> state(S);
    std::vector<T*> next(S), extra(l.saved);
    ForwardRow<T> row;
    row.hidden = H;
    row.state = state.data();
    row.next_state = next.data();
    row.saved = extra.data();
    row.units = units.data();
    // Points the row at row b of step t (next_at: where step t's states go).
    auto point = [&](std::size_t t, std::size_t next_at, bool last, std::size_t b) {
        row.gates = gates + (t * B + b) * GH;
        for (std::size_t s = 0; s < S; ++s) {
            state[s] = saved.states[s].data() + (t * B + b) * H;
            next[s] = (last ? finals[s].data() : saved.states[s].data() + next_at * B * H) + b * H;
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
            recurrent->operator()(saved.states[0].data() + t * B * H,
                                  d.separate() ? recurrent_out.data() : gates + t * B * GH);
        for (std::size_t b = 0; b < B; ++b) {
            point(t, next_at, last, b);
            if (saved.row_active(t, b)) {
                saved.rules->forward(row);
                continue;
            }
            // A finished row keeps its state; q is zeroed so the dW_2 GEMM reads no garbage.
            for (std::size_t s = 0; s < S; ++s) std::copy_n(state[s], H, next[s]);
            if (row.gated_state) std::fill_n(row.gated_state, H, T(0));
        }
        if (second) {
            second->operator()(saved.gated.data() + t * B * H, second_out.data());
            for (std::size_t b = 0; b < B; ++b)
                if (saved.row_active(t, b)) {
                    point(t, next_at, last, b);
                    saved.rules->forward_second(row);
                }
        }
        // The output is h after the step, zeros in finished rows.
        const T* h = last ? finals[0].data() : saved.states[0].data() + next_at * B * H;
        T* out = output.data() + t * B * H;
        for (std::size_t b = 0; b < B; ++b) {
            if (saved.row_active(t, b)) std::copy_n(h + b * H, H, out + b * H);
            else std::fill_n(out + b * H, H, T(0));
        }
    }
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * H);
        std::copy_n(finals[s].data(), B * H, saved.finals[s].data());
    }
    if (saved.probe)
        for (std::size_t s = 0; s < S; ++s) {
            xt::xarray<T> after = xt::xarray<T>::from_shape({d.steps, B, H});
            for (std::size_t k = 0; k < d.steps; ++k) {
                const std::size_t t = step_at(k, d.steps, saved.reverse);
                const T* source = k + 1 == d.steps ? finals[s].data()
                                                   : saved.states[s].data() + step_at(k + 1, d.steps, saved.reverse) * B * H;
                std::copy_n(source, B * H, after.data() + t * B * H);
            }
            saved.probe->states_after.push_back(std::move(after));
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
    const std::size_t B = d.batch, H = d.hidden, GH = d.gate_width(), TB = d.steps * d.batch, I = d.input, S = l.states;
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();

    if (saved.probe) {
        saved.probe->grad_states_before.assign(S, xt::xarray<T>::from_shape({d.steps, B, H}));
        saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, B, GH});
    }
    std::vector<xt::xarray<T>> grad_state(S);
    for (std::size_t s = 0; s < S; ++s) {
        grad_state[s] = xt::xarray<T>::from_shape({B, H});
        if (ctx.has_grad_output(1 + s)) std::copy_n(ctx.grad_output(1 + s).value().data(), B * H, grad_state[s].data());
        else std::fill_n(grad_state[s].data(), B * H, T(0));
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

    // dh_{t-1} += dR W_hh and dq = dR_2 W_2 every step: the weights packed once (gemm.hpp).
    std::unique_ptr<blas::PackedGemm<T>> recurrent_backward, second_backward;
    if (l.recurrent > 0)
        recurrent_backward = std::make_unique<blas::PackedGemm<T>>(false, B, H, d.recurrent_width(),
                                                                   ctx.input(in.weight_hh).value().data(), H, T(1),
                                                                   d.recurrent_stride(), H, d.steps);
    if (l.second > 0)
        second_backward = std::make_unique<blas::PackedGemm<T>>(false, B, H, d.second_width(),
                                                                ctx.input(in.weight_second).value().data(), H, T(0),
                                                                d.second_width(), H, d.steps);

    std::vector<const T*> state(S), next(S), extra(l.saved);
    std::vector<T*> dstate(S);
    BackwardRow<T> row;
    row.hidden = H;
    row.state = state.data();
    row.next_state = next.data();
    row.saved = extra.data();
    row.units = units.data();
    row.grad_state = dstate.data();
    row.grad_units = grad_unit_ptrs.data();
    auto point = [&](std::size_t t, std::size_t next_at, bool last, std::size_t b) {
        row.gates = saved.gates.data() + (t * B + b) * GH;
        for (std::size_t s = 0; s < S; ++s) {
            state[s] = saved.states[s].data() + (t * B + b) * H;
            next[s] = (last ? saved.finals[s].data() : saved.states[s].data() + next_at * B * H) + b * H;
            dstate[s] = grad_state[s].data() + b * H;
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
                    const T* dout = grad_output + (t * B + b) * H;
                    T* dh = dstate[0];
                    lanes<T>(H, [&](std::size_t j, auto tag) {
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
                std::copy_n(grad_state[s].data(), B * H, saved.probe->grad_states_before[s].data() + t * B * H);
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
        xt::xarray<T> dw = xt::xarray<T>::from_shape({RH, H});
        blas::gemm(true, false, RH, H, TB, T(1), dgh, d.recurrent_stride(), saved.states[0].data(), H, T(0), dw.data(), H);
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

template class CellRules<float>;
template class CellRules<double>;
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
