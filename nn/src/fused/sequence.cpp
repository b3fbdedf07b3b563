// The fused whole-sequence op: the GEMMs and the step loops of forward and backward around
// the element-wise passes of fused_pointwise.cpp. See fused.hpp for the design.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include <fmt/format.h>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "rewind/nn/fused/kernels.hpp"

namespace rw::nn::fused {

bool parse_cell_type(const std::string& kind, CellType& type) {
    if (kind == "rnn_tanh") type = CellType::rnn_tanh;
    else if (kind == "rnn_relu") type = CellType::rnn_relu;
    else if (kind == "lstm") type = CellType::lstm;
    else if (kind == "gru") type = CellType::gru;
    else return false;
    return true;
}

std::string cell_type_name(CellType type) {
    switch (type) {
        case CellType::rnn_tanh: return "rnn_tanh";
        case CellType::rnn_relu: return "rnn_relu";
        case CellType::lstm: return "lstm";
        case CellType::gru: return "gru";
    }
    return "?";
}

std::size_t gate_count(CellType type) {
    switch (type) {
        case CellType::lstm: return 4;
        case CellType::gru: return 3;
        default: return 1;
    }
}

std::size_t state_count(CellType type) { return type == CellType::lstm ? 2 : 1; }

std::size_t saved_bytes_per_step(CellType type, std::size_t batch, std::size_t hidden, std::size_t element_size,
                                 bool with_lengths) {
    // gate activations [B, G*H] + h before the step [B, H] (+ c before the step, + W_hn h + b_hn).
    std::size_t per_row = gate_count(type) * hidden + hidden;
    if (type == CellType::lstm || type == CellType::gru) per_row += hidden;
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
        const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
        data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
        if (!data_) throw std::bad_alloc();
    }
    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }
    std::size_t size() const { return count_; }

private:
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T, Free> data_;
    std::size_t count_ = 0;
};

struct Dims {
    std::size_t steps = 0, batch = 0, input = 0, hidden = 0, gates = 0;
    std::size_t gate_width() const { return gates * hidden; }
};

// Everything the backward needs besides the op's inputs, in time order (index t is step t
// whatever the direction).
template <class T>
struct Saved {
    CellType type = CellType::lstm;
    Dims dims;
    bool reverse = false;
    Buffer<T> gates;     // [T, B, G*H] activations (RNN: h_t itself)
    Buffer<T> h_prev;    // [T, B, H] h before step t
    Buffer<T> c_prev;    // LSTM [T, B, H]
    Buffer<T> c_last;    // LSTM [B, H] c after the last processed step (= c_n)
    Buffer<T> hidden_n;  // GRU [T, B, H] W_hn h + b_hn
    std::vector<std::uint8_t> active;  // [T, B], empty when every row runs every step
    std::vector<bool> all_active;      // per step

    const std::uint8_t* active_at(std::size_t t) const {
        return active.empty() || all_active[t] ? nullptr : active.data() + t * dims.batch;
    }
};

std::size_t step_at(std::size_t k, std::size_t steps, bool reverse) { return reverse ? steps - 1 - k : k; }

template <class T>
void check_arguments(CellType type, const Tensor<T>& input, const State<T>& initial_state, const Tensor<T>& weight_ih,
                     const Tensor<T>& weight_hh, const Tensor<T>& bias_ih, const Tensor<T>& bias_hh,
                     const std::vector<std::int64_t>& lengths, Dims& dims) {
    const std::string op = "fused " + cell_type_name(type);
    if (input.dim() != 3) throw_shape_error(op, "expects a 3-D input [T, B, input_size]", input.shape());
    dims.steps = input.size(0);
    dims.batch = input.size(1);
    dims.input = input.size(2);
    dims.gates = gate_count(type);
    if (weight_hh.dim() != 2 || weight_hh.size(0) % dims.gates != 0)
        throw_shape_error(op, "weight_hh must be [G*H, H]", weight_hh.shape());
    dims.hidden = weight_hh.size(1);
    const std::size_t rows = dims.gate_width();
    if (weight_hh.size(0) != rows) throw_shape_error(op, "weight_hh must be [G*H, H]", weight_hh.shape());
    if (weight_ih.shape() != Shape{rows, dims.input})
        throw_shape_error(op, "weight_ih must be [G*H, input_size]", weight_ih.shape(), input.shape());
    if (bias_ih.shape() != Shape{rows} || bias_hh.shape() != Shape{rows})
        throw_shape_error(op, "biases must be [G*H]", bias_ih.shape(), bias_hh.shape());
    if (initial_state.size() != state_count(type))
        throw std::invalid_argument(fmt::format("{}: {} initial state tensors given, expected {}", op,
                                                initial_state.size(), state_count(type)));
    for (const auto& state : initial_state)
        if (state.shape() != Shape{dims.batch, dims.hidden})
            throw_shape_error(op, "initial state must be [B, H]", state.shape());
    if (!lengths.empty()) {
        if (lengths.size() != dims.batch)
            throw std::invalid_argument(fmt::format("{}: {} lengths for a batch of {}", op, lengths.size(), dims.batch));
        for (auto length : lengths)
            if (length < 1 || length > std::int64_t(dims.steps))
                throw std::invalid_argument(fmt::format("{}: length {} outside 1..{}", op, length, dims.steps));
    }
    if (dims.steps == 0 || dims.batch == 0) throw_shape_error(op, "needs at least one step and one row", input.shape());
}

// ---- forward ----

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const T* x, const T* w_ih, const T* w_hh, const T* b_ih,
                                   const T* b_hh, const T* h0, const T* c0) {
    const Dims& d = saved.dims;
    const std::size_t B = d.batch, H = d.hidden, GH = d.gate_width(), TB = d.steps * d.batch;
    const bool lstm = saved.type == CellType::lstm, gru = saved.type == CellType::gru;
    const bool relu = saved.type == CellType::rnn_relu;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, H});
    xt::xarray<T> h_n = xt::xarray<T>::from_shape({B, H});
    xt::xarray<T> c_n;
    if (lstm) c_n = xt::xarray<T>::from_shape({B, H});

    // All input projections at once, on top of the biases outside the recurrence
    // (b_ih + b_hh; for GRU only b_ih: b_hn sits inside the reset product).
    saved.gates = Buffer<T>(TB * GH);
    T* gates = saved.gates.data();
    detail::fill_rows(gates, TB, GH, b_ih, gru ? nullptr : b_hh);
    blas::gemm(false, true, TB, GH, d.input, T(1), x, d.input, w_ih, d.input, T(1), gates, GH);

    saved.h_prev = Buffer<T>(TB * H);
    if (lstm) saved.c_prev = Buffer<T>(TB * H);
    Buffer<T> hidden_gates;
    if (gru) {
        saved.hidden_n = Buffer<T>(TB * H);
        hidden_gates = Buffer<T>(B * GH);
    }

    const std::size_t first = step_at(0, d.steps, saved.reverse);
    std::copy_n(h0, B * H, saved.h_prev.data() + first * B * H);
    if (lstm) std::copy_n(c0, B * H, saved.c_prev.data() + first * B * H);

    // h W_hh^T every step with the same W_hh: packed once for all steps (gemm.hpp).
    const blas::PackedGemm<T> recurrent(true, B, GH, H, w_hh, H, gru ? T(0) : T(1), H, GH, d.steps);
    for (std::size_t k = 0; k < d.steps; ++k) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        const bool last = k + 1 == d.steps;
        const std::size_t next = last ? 0 : step_at(k + 1, d.steps, saved.reverse);
        detail::ForwardStep<T> s;
        s.batch = B;
        s.hidden = H;
        s.gates = gates + t * B * GH;
        s.h_prev = saved.h_prev.data() + t * B * H;
        s.h_next = last ? h_n.data() : saved.h_prev.data() + next * B * H;
        s.output = output.data() + t * B * H;
        s.active = saved.active_at(t);
        if (lstm) {
            s.c_prev = saved.c_prev.data() + t * B * H;
            s.c_next = last ? c_n.data() : saved.c_prev.data() + next * B * H;
        }
        if (gru) {
            recurrent(s.h_prev, hidden_gates.data());
            s.hidden_gates = hidden_gates.data();
            s.bias_hh = b_hh;
            s.hidden_n = saved.hidden_n.data() + t * B * H;
            detail::gru_forward_step(s);
        } else {
            recurrent(s.h_prev, s.gates);
            if (lstm) detail::lstm_forward_step(s);
            else detail::rnn_forward_step(s, relu);
        }
    }
    if (lstm) {
        saved.c_last = Buffer<T>(B * H);
        std::copy_n(c_n.data(), B * H, saved.c_last.data());
    }

    std::vector<xt::xarray<T>> outputs;
    outputs.push_back(std::move(output));
    outputs.push_back(std::move(h_n));
    if (lstm) outputs.push_back(std::move(c_n));
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
    const std::size_t B = d.batch, H = d.hidden, GH = d.gate_width(), TB = d.steps * d.batch, I = d.input;
    const bool lstm = saved.type == CellType::lstm, gru = saved.type == CellType::gru;
    const bool relu = saved.type == CellType::rnn_relu;
    const T* x = ctx.input(0).value().data();
    const T* w_ih = ctx.input(1).value().data();
    const T* w_hh = ctx.input(2).value().data();
    enum { X = 0, W_IH, W_HH, B_IH, B_HH, H0, C0 };
    const bool need_h0 = ctx.needs_input_grad(H0);
    const bool need_c0 = lstm && ctx.needs_input_grad(C0);

    xt::xarray<T> grad_h = xt::xarray<T>::from_shape({B, H});
    if (ctx.has_grad_output(1)) std::copy_n(ctx.grad_output(1).value().data(), B * H, grad_h.data());
    else std::fill_n(grad_h.data(), B * H, T(0));
    xt::xarray<T> grad_c;
    if (lstm) {
        grad_c = xt::xarray<T>::from_shape({B, H});
        if (ctx.has_grad_output(2)) std::copy_n(ctx.grad_output(2).value().data(), B * H, grad_c.data());
        else std::fill_n(grad_c.data(), B * H, T(0));
    }
    const T* grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;

    Buffer<T> grad_gates(TB * GH);
    Buffer<T> grad_hidden_gates;  // GRU: the hidden side differs from the input side in the n block
    if (gru) grad_hidden_gates = Buffer<T>(TB * GH);
    T* dgx = grad_gates.data();
    T* dgh = gru ? grad_hidden_gates.data() : dgx;

    // dh_{t-1} += dG_h W_hh every step: W_hh packed once (gemm.hpp).
    const blas::PackedGemm<T> recurrent_backward(false, B, H, GH, w_hh, H, T(1), GH, H, d.steps);
    for (std::size_t k = d.steps; k-- > 0;) {
        const std::size_t t = step_at(k, d.steps, saved.reverse);
        detail::BackwardStep<T> s;
        s.batch = B;
        s.hidden = H;
        s.gates = saved.gates.data() + t * B * GH;
        s.grad_output = grad_output ? grad_output + t * B * H : nullptr;
        s.grad_h = grad_h.data();
        s.grad_gates = dgx + t * B * GH;
        s.active = saved.active_at(t);
        if (lstm) {
            const bool last = k + 1 == d.steps;
            s.c_prev = saved.c_prev.data() + t * B * H;
            s.c_next = last ? saved.c_last.data()
                            : saved.c_prev.data() + step_at(k + 1, d.steps, saved.reverse) * B * H;
            s.grad_c = grad_c.data();
            detail::lstm_backward_step(s);
        } else if (gru) {
            s.hidden_n = saved.hidden_n.data() + t * B * H;
            s.h_prev = saved.h_prev.data() + t * B * H;
            s.grad_hidden_gates = dgh + t * B * GH;
            detail::gru_backward_step(s);
        } else {
            detail::rnn_backward_step(s, relu);
        }
        // dh_{t-1} += dG_h W_hh; after the first step only h0's gradient would remain.
        if (k > 0 || need_h0)
            recurrent_backward(dgh + t * B * GH, grad_h.data());
    }

    Gradients<T> gradients(ctx.num_inputs());
    if (ctx.needs_input_grad(X)) {
        xt::xarray<T> dx = xt::xarray<T>::from_shape({d.steps, B, I});
        blas::gemm(false, false, TB, I, GH, T(1), dgx, GH, w_ih, I, T(0), dx.data(), I);
        gradients[X] = Tensor<T>(std::move(dx));
    }
    if (ctx.needs_input_grad(W_IH)) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape({GH, I});
        blas::gemm(true, false, GH, I, TB, T(1), dgx, GH, x, I, T(0), dw.data(), I);
        gradients[W_IH] = Tensor<T>(std::move(dw));
    }
    if (ctx.needs_input_grad(W_HH)) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape({GH, H});
        blas::gemm(true, false, GH, H, TB, T(1), dgh, GH, saved.h_prev.data(), H, T(0), dw.data(), H);
        gradients[W_HH] = Tensor<T>(std::move(dw));
    }
    if (ctx.needs_input_grad(B_IH)) {
        xt::xarray<T> db = xt::xarray<T>::from_shape({GH});
        detail::column_sums(dgx, TB, GH, db.data(), false);
        gradients[B_IH] = Tensor<T>(std::move(db));
    }
    if (ctx.needs_input_grad(B_HH)) {
        xt::xarray<T> db = xt::xarray<T>::from_shape({GH});
        if (!gru && gradients[B_IH].defined()) db = gradients[B_IH].value();
        else detail::column_sums(dgh, TB, GH, db.data(), false);
        gradients[B_HH] = Tensor<T>(std::move(db));
    }
    if (need_h0) gradients[H0] = Tensor<T>(std::move(grad_h));
    if (need_c0) gradients[C0] = Tensor<T>(std::move(grad_c));
    return gradients;
}

}  // namespace

template <class T>
SequenceResult<T> run_sequence(CellType type, const Tensor<T>& input, const State<T>& initial_state,
                               const Tensor<T>& weight_ih, const Tensor<T>& weight_hh, const Tensor<T>& bias_ih,
                               const Tensor<T>& bias_hh, const std::vector<std::int64_t>& lengths, bool reverse) {
    auto saved = std::make_shared<Saved<T>>();
    saved->type = type;
    saved->reverse = reverse;
    check_arguments(type, input, initial_state, weight_ih, weight_hh, bias_ih, bias_hh, lengths, saved->dims);
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

    const bool lstm = type == CellType::lstm;
    auto values = forward(*saved, input.value().data(), weight_ih.value().data(), weight_hh.value().data(),
                          bias_ih.value().data(), bias_hh.value().data(), initial_state[0].value().data(),
                          lstm ? initial_state[1].value().data() : nullptr);

    std::vector<Tensor<T>> inputs{input, weight_ih, weight_hh, bias_ih, bias_hh, initial_state[0]};
    if (lstm) inputs.push_back(initial_state[1]);
    auto outputs = record_op<T>("fused_" + cell_type_name(type) + (reverse ? "_reverse" : ""), std::move(inputs),
                                std::move(values), [saved](const BackwardContext<T>& ctx) -> Gradients<T> {
                                    return backward(*saved, ctx);
                                });
    SequenceResult<T> result;
    result.output = outputs[0];
    result.final_state.assign(outputs.begin() + 1, outputs.end());
    return result;
}

template SequenceResult<float> run_sequence(CellType, const Tensor<float>&, const State<float>&, const Tensor<float>&,
                                            const Tensor<float>&, const Tensor<float>&, const Tensor<float>&,
                                            const std::vector<std::int64_t>&, bool);
template SequenceResult<double> run_sequence(CellType, const Tensor<double>&, const State<double>&,
                                             const Tensor<double>&, const Tensor<double>&, const Tensor<double>&,
                                             const Tensor<double>&, const std::vector<std::int64_t>&, bool);

}  // namespace rw::nn::fused
