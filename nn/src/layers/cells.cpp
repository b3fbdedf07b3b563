#include "rewind/nn/layers/cells.hpp"

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/ops.hpp>

#include "rewind/nn/fused/lanes.hpp"
#include "rewind/nn/layers/init.hpp"

namespace rw::nn {

using fused::lanes;
using fused::load_lane;
using fused::store_lane;

template <class T>
GatedCell<T>::GatedCell(std::size_t input_size, std::size_t hidden_size, std::size_t gates, Generator& generator,
                        const CellInit& init, const CellOptions& options, std::size_t recurrent_size)
    : RecurrentCell<T>(input_size, hidden_size), gates_(gates) {
    // input_size 0 is allowed, as in PyTorch: weight_ih [G*H, 0], the input adds nothing.
    if (hidden_size == 0)
        throw std::invalid_argument("recurrent cell: option 'hidden_size' must be at least 1, got 0");
    const std::size_t rows = gates * hidden_size;
    const double bound = 1.0 / std::sqrt(double(hidden_size));
    // Draw in PyTorch's parameter order so a seed fixes every parameter whatever the options.
    auto w_ih = init::uniform<T>({rows, input_size}, -bound, bound, generator);
    auto w_hh = init::uniform<T>({rows, recurrent_size}, -bound, bound, generator);
    if (init.xavier_input) w_ih = init::xavier_uniform<T>({rows, input_size}, generator);
    if (init.orthogonal_recurrent) w_hh = init::orthogonal<T>({rows, recurrent_size}, generator);
    weight_ih_ = this->register_parameter("weight_ih", Tensor<T>(std::move(w_ih)));
    weight_hh_ = this->register_parameter("weight_hh", Tensor<T>(std::move(w_hh)));
    if (!options.bias) return;  // PyTorch's bias=False: the biases do not exist
    auto b_ih = init::uniform<T>({rows}, -bound, bound, generator);
    auto b_hh = init::uniform<T>({rows}, -bound, bound, generator);
    if (init.xavier_input || init.orthogonal_recurrent) {
        b_ih.fill(T(0));
        b_hh.fill(T(0));
    }
    bias_ih_ = this->register_parameter("bias_ih", Tensor<T>(std::move(b_ih)));
    bias_hh_ = this->register_parameter("bias_hh", Tensor<T>(std::move(b_hh)));
}

template <class T>
Tensor<T> GatedCell<T>::project_input(const Tensor<T>& input, const Tensor<T>& bias) const {
    if (input.dim() != 3 || input.size(2) != this->input_size())
        throw_shape_error(this->kind(), "expects input [T, B, input_size] matching weight_ih [G*H, input_size]",
                          input.shape(), weight_ih_.shape());
    // One GEMM over all T*B rows, straight from and to [T, B, *] (no reshape copies).
    const Tensor<T> projected = gemm(input, weight_ih_, false, true);
    return bias.defined() ? add(projected, bias) : projected;
}

template <class T>
Tensor<T> GatedCell<T>::summed_bias() const {
    return bias_ih_.defined() ? add(bias_ih_, bias_hh_) : Tensor<T>();
}

// Each cell below: its generic step() (ordinary ops on the tape) and, beside it, its fused
// rules for one row of one step (fused/cell_rules.hpp; derivations in docs/derivatives.md).

// ---- RNN ----

template <class T>
RNNCell<T>::RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
                    const CellInit& init, const CellOptions& options)
    : GatedCell<T>(input_size, hidden_size, 1, generator, init, options, hidden_size), nonlinearity_(nonlinearity) {}

template <class T>
Tensor<T> RNNCell<T>::prepare_input(const Tensor<T>& input) const {
    return this->project_input(input, this->summed_bias());
}

template <class T>
State<T> RNNCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    Tensor<T> pre = add(x_t, gemm(state[0], this->weight_hh_, false, true));
    return {nonlinearity_ == Nonlinearity::tanh ? tanh(pre) : relu(pre)};
}

template <class T>
std::string RNNCell<T>::kind() const {
    return nonlinearity_ == Nonlinearity::tanh ? "rnn_tanh" : "rnn_relu";
}

// h' = f(a), a = the gate row (x W_ih^T + b_ih + b_hh + h W_hh^T); the row keeps h' for backward.
template <class T>
void RNNCell<T>::forward(const fused::ForwardRow<T>& row) const {
    T* a = row.gates;
    T* h = row.next_state[0];
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V x = load_lane<V>(a + j);
        const V y = relu ? fused::relu_lane(x) : fused::tanh_lane(x);
        store_lane(a + j, y);
        store_lane(h + j, y);
    });
}

// da = dh' f'(a): 1 - h'^2 (tanh) or [h' > 0] (relu); no direct path from h to h'.
template <class T>
void RNNCell<T>::backward(const fused::BackwardRow<T>& row) const {
    const T* y = row.gates;
    T* dh = row.grad_state[0];
    T* da = row.grad_gates;
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V g = load_lane<V>(dh + j);
        const V yv = load_lane<V>(y + j);
        store_lane(da + j, relu ? fused::where_positive(yv, g) : g * (V(1) - yv * yv));
        store_lane(dh + j, V(0));
    });
}

// ---- LSTM ----

namespace {

void check_projection(const CellOptions& options, std::size_t hidden_size) {
    if (options.proj_size >= hidden_size)
        throw std::invalid_argument(fmt::format("lstm: proj_size must be smaller than hidden_size: expected < {}, got {}",
                                                hidden_size, options.proj_size));
}

}  // namespace

template <class T>
LSTMCell<T>::LSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init,
                      const CellOptions& options)
    : GatedCell<T>(input_size, hidden_size, 4, generator, init, options,
                   options.proj_size > 0 ? options.proj_size : hidden_size) {
    if (init.forget_bias != 0.0) {
        if (!options.bias) throw std::invalid_argument("lstm: forget_bias needs the biases, but bias is false");
        // Gate order i, f, g, o: the forget gate is the second block.
        for (auto* bias : {&this->bias_ih_, &this->bias_hh_})
            for (std::size_t j = hidden_size; j < 2 * hidden_size; ++j)
                bias->mutable_value()(j) += static_cast<T>(init.forget_bias / 2);
    }
    if (options.proj_size > 0) {
        check_projection(options, hidden_size);
        // PyTorch's order and init: weight_hr comes last, from the same U(-1/sqrt(H), 1/sqrt(H)).
        const double bound = 1.0 / std::sqrt(double(hidden_size));
        weight_hr_ = this->register_parameter(
            "weight_hr", Tensor<T>(init::uniform<T>({options.proj_size, hidden_size}, -bound, bound, generator)));
    }
}

template <class T>
Tensor<T> LSTMCell<T>::prepare_input(const Tensor<T>& input) const {
    return this->project_input(input, this->summed_bias());
}

template <class T>
State<T> LSTMCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    const auto& h = state[0];
    const auto& c = state[1];
    auto gates = chunk(add(x_t, gemm(h, this->weight_hh_, false, true)), 4, 1);
    Tensor<T> input_gate = sigmoid(gates[0]);
    Tensor<T> forget_gate = sigmoid(gates[1]);
    Tensor<T> candidate = tanh(gates[2]);
    Tensor<T> output_gate = sigmoid(gates[3]);
    Tensor<T> next_c = add(mul(forget_gate, c), mul(input_gate, candidate));
    Tensor<T> next_h = mul(output_gate, tanh(next_c));
    if (weight_hr_.defined()) next_h = gemm(next_h, weight_hr_, false, true);
    return {next_h, next_c};
}

template <class T>
std::string LSTMCell<T>::kind() const {
    return "lstm";
}

// The gate row becomes i, f, g, o (activations) for backward. With proj_size, next_state[0] is
// m = o tanh(c') and the driver makes h' = m W_hr^T; the rule itself is the same.
template <class T>
void LSTMCell<T>::forward(const fused::ForwardRow<T>& row) const {
    const std::size_t H = row.hidden;
    T* gi = row.gates;
    T* gf = gi + H;
    T* gg = gi + 2 * H;
    T* go = gi + 3 * H;
    const T* cp = row.state[1];
    T* h = row.next_state[0];
    T* c = row.next_state[1];
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V i = fused::sigmoid_lane(load_lane<V>(gi + j));
        const V f = fused::sigmoid_lane(load_lane<V>(gf + j));
        const V g = fused::tanh_lane(load_lane<V>(gg + j));
        const V o = fused::sigmoid_lane(load_lane<V>(go + j));
        const V cn = f * load_lane<V>(cp + j) + i * g;
        store_lane(gi + j, i);
        store_lane(gf + j, f);
        store_lane(gg + j, g);
        store_lane(go + j, o);
        store_lane(c + j, cn);
        store_lane(h + j, o * fused::tanh_lane(cn));
    });
}

// dh' (or, with proj_size, dm = dh' W_hr from the driver) in grad_state[0].
template <class T>
void LSTMCell<T>::backward(const fused::BackwardRow<T>& row) const {
    const std::size_t H = row.hidden;
    const T* gi = row.gates;
    const T* gf = gi + H;
    const T* gg = gi + 2 * H;
    const T* go = gi + 3 * H;
    const T* cp = row.state[1];
    const T* cn = row.next_state[1];
    T* dh = row.grad_state[0];
    T* dc = row.grad_state[1];
    T* dgi = row.grad_gates;
    T* dgf = dgi + H;
    T* dgg = dgi + 2 * H;
    T* dgo = dgi + 3 * H;
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dhv = load_lane<V>(dh + j);
        const V i = load_lane<V>(gi + j), f = load_lane<V>(gf + j), g = load_lane<V>(gg + j), o = load_lane<V>(go + j);
        const V tc = fused::tanh_lane(load_lane<V>(cn + j));
        const V dcv = load_lane<V>(dc + j) + dhv * o * (V(1) - tc * tc);
        store_lane(dgi + j, dcv * g * i * (V(1) - i));
        store_lane(dgf + j, dcv * load_lane<V>(cp + j) * f * (V(1) - f));
        store_lane(dgg + j, dcv * i * (V(1) - g * g));
        store_lane(dgo + j, dhv * tc * o * (V(1) - o));
        store_lane(dc + j, dcv * f);
        store_lane(dh + j, V(0));
    });
}

// ---- GRU ----

template <class T>
GRUCell<T>::GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init,
                    const CellOptions& options)
    : GatedCell<T>(input_size, hidden_size, 3, generator, init, options, hidden_size) {}

template <class T>
Tensor<T> GRUCell<T>::prepare_input(const Tensor<T>& input) const {
    // b_hh stays out: its n-block sits inside the reset product.
    return this->project_input(input, this->bias_ih_);
}

template <class T>
State<T> GRUCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    const auto& h = state[0];
    auto input_gates = chunk(x_t, 3, 1);
    Tensor<T> hidden_product = gemm(h, this->weight_hh_, false, true);
    if (this->bias_hh_.defined()) hidden_product = add(hidden_product, this->bias_hh_);
    auto hidden_gates = chunk(hidden_product, 3, 1);
    Tensor<T> reset = sigmoid(add(input_gates[0], hidden_gates[0]));
    Tensor<T> update = sigmoid(add(input_gates[1], hidden_gates[1]));
    Tensor<T> candidate = tanh(add(input_gates[2], mul(reset, hidden_gates[2])));
    // (1 - z) n + z h, written as n + z (h - n).
    return {add(candidate, mul(update, sub(h, candidate)))};
}

template <class T>
std::string GRUCell<T>::kind() const {
    return "gru";
}

// The gate row becomes r, z, n; saved[0] keeps W_hn h + b_hn for the reset gate's derivative.
// Without bias (row.bias_hh null) the same rule runs on zeros in its place.
template <class T>
void GRUCell<T>::forward(const fused::ForwardRow<T>& row) const {
    const std::size_t H = row.hidden;
    T* xr = row.gates;
    T* xz = xr + H;
    T* xn = xr + 2 * H;
    const T* hr = row.recurrent;
    const T* hz = hr + H;
    const T* hn = hr + 2 * H;
    const T* bias = row.bias_hh;  // [3H]: b_hr, b_hz, b_hn; null without bias
    const T* hp = row.state[0];
    T* saved_n = row.saved[0];
    T* h = row.next_state[0];
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        // Zeros in place of a missing bias, added all the same so both cases round alike; no
        // buffer of zeros per row in this hot loop.
        auto bias_at = [&](std::size_t block) { return bias ? load_lane<V>(bias + block * H + j) : V(T(0)); };
        const V r = fused::sigmoid_lane(load_lane<V>(xr + j) + (load_lane<V>(hr + j) + bias_at(0)));
        const V z = fused::sigmoid_lane(load_lane<V>(xz + j) + (load_lane<V>(hz + j) + bias_at(1)));
        const V hidden_n = load_lane<V>(hn + j) + bias_at(2);
        const V n = fused::tanh_lane(load_lane<V>(xn + j) + r * hidden_n);
        store_lane(xr + j, r);
        store_lane(xz + j, z);
        store_lane(xn + j, n);
        store_lane(saved_n + j, hidden_n);
        store_lane(h + j, n + z * (load_lane<V>(hp + j) - n));
    });
}

// Input and hidden sides agree except in the n block, where the hidden side carries r.
template <class T>
void GRUCell<T>::backward(const fused::BackwardRow<T>& row) const {
    const std::size_t H = row.hidden;
    const T* gr = row.gates;
    const T* gz = gr + H;
    const T* gn = gr + 2 * H;
    const T* saved_n = row.saved[0];
    const T* hp = row.state[0];
    T* dh = row.grad_state[0];
    T* dxr = row.grad_gates;
    T* dxz = dxr + H;
    T* dxn = dxr + 2 * H;
    T* dhr = row.grad_recurrent;
    T* dhz = dhr + H;
    T* dhn = dhr + 2 * H;
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dhv = load_lane<V>(dh + j);
        const V r = load_lane<V>(gr + j), z = load_lane<V>(gz + j), n = load_lane<V>(gn + j);
        const V dpn = dhv * (V(1) - z) * (V(1) - n * n);
        const V dpr = dpn * load_lane<V>(saved_n + j) * r * (V(1) - r);
        const V dpz = dhv * (load_lane<V>(hp + j) - n) * z * (V(1) - z);
        store_lane(dxr + j, dpr);
        store_lane(dxz + j, dpz);
        store_lane(dxn + j, dpn);
        store_lane(dhr + j, dpr);
        store_lane(dhz + j, dpz);
        store_lane(dhn + j, dpn * r);
        store_lane(dh + j, dhv * z);
    });
}

template class GatedCell<float>;
template class GatedCell<double>;
template class RNNCell<float>;
template class RNNCell<double>;
template class LSTMCell<float>;
template class LSTMCell<double>;
template class GRUCell<float>;
template class GRUCell<double>;

}  // namespace rw::nn
