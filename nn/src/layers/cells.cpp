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
StandardCell<T>::StandardCell(std::size_t input_size, std::size_t hidden_size, std::size_t gates, Generator& generator,
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
Tensor<T> StandardCell<T>::project_input(const Tensor<T>& input, const Tensor<T>& bias) const {
    if (input.dim() != 3 || input.size(2) != this->input_size())
        throw_shape_error(this->kind(), "expects input [T, B, input_size] matching weight_ih [G*H, input_size]",
                          input.shape(), weight_ih_.shape());
    // One GEMM over all T*B rows, straight from and to [T, B, *] (no reshape copies).
    const Tensor<T> projected = gemm(input, weight_ih_, false, true);
    return bias.defined() ? add(projected, bias) : projected;
}

template <class T>
Tensor<T> StandardCell<T>::summed_bias() const {
    return bias_ih_.defined() ? add(bias_ih_, bias_hh_) : Tensor<T>();
}

// Each cell below: its generic step() (ordinary ops on the tape) and, beside it, its fused
// rules for one row of one step (fused/cell_rules.hpp; derivations in docs/derivatives.md).

// ---- RNN ----

template <class T>
RNNCell<T>::RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
                    const CellInit& init, const CellOptions& options)
    : FusedCell<RNNCell<T>, T, StandardCell<T>>(input_size, hidden_size, 1, generator, init, options, hidden_size), nonlinearity_(nonlinearity) {}

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
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V x = load_lane<V>(row.gate(0) + j);
        const V y = relu ? fused::relu_lane(x) : fused::tanh_lane(x);
        store_lane(row.gate(0) + j, y);
        store_lane(row.next_state[0] + j, y);
    });
}

// da = dh' f'(a): 1 - h'^2 (tanh) or [h' > 0] (relu); no direct path from h to h'.
template <class T>
void RNNCell<T>::backward(const fused::BackwardRow<T>& row) const {
    T* dh = row.grad_state[0];
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V g = load_lane<V>(dh + j), y = load_lane<V>(row.gate(0) + j);
        store_lane(row.grad_gate(0) + j, relu ? fused::where_positive(y, g) : g * (V(1) - y * y));
        store_lane(dh + j, V(0));
    });
}

// Tangent rules (docs/derivatives.md, "Fused tangent rules"): ẏ = f'(a) ȧ, read off y.
template <class T>
bool RNNCell<T>::has_tangent_rules() const {
    return true;
}

template <class T>
void RNNCell<T>::forward_tangent(const fused::ForwardTangentRow<T>& row) const {
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V y = load_lane<V>(row.gate(0) + j), da = load_lane<V>(row.tangent_gates + j);
        const V dy = relu ? fused::where_positive(y, da) : da * (V(1) - y * y);
        store_lane(row.tangent_gates + j, dy);
        store_lane(row.tangent_next_state[0] + j, dy);
    });
}

// tanh: (dh (1 - y²))˙ = ḋh (1 - y²) - 2 dh y ẏ; relu: [y > 0] ḋh (f'' = 0 almost everywhere).
template <class T>
void RNNCell<T>::backward_tangent(const fused::BackwardTangentRow<T>& row) const {
    const T* dh = row.grad_state[0];
    T* tdh = row.tangent_grad_state[0];
    const bool relu = nonlinearity_ == Nonlinearity::relu;
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V g = load_lane<V>(dh + j), tg = load_lane<V>(tdh + j), y = load_lane<V>(row.gate(0) + j);
        const V ty = load_lane<V>(row.tangent_gates + j);
        store_lane(row.tangent_grad_gate(0) + j,
                   relu ? fused::where_positive(y, tg) : tg * (V(1) - y * y) - V(2) * g * y * ty);
        store_lane(tdh + j, V(0));
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
    : FusedCell<LSTMCell<T>, T, StandardCell<T>>(input_size, hidden_size, 4, generator, init, options,
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
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V i = fused::sigmoid_lane(load_lane<V>(row.gate(0) + j));
        const V f = fused::sigmoid_lane(load_lane<V>(row.gate(1) + j));
        const V g = fused::tanh_lane(load_lane<V>(row.gate(2) + j));
        const V o = fused::sigmoid_lane(load_lane<V>(row.gate(3) + j));
        const V c = f * load_lane<V>(row.state[1] + j) + i * g;
        store_lane(row.gate(0) + j, i);
        store_lane(row.gate(1) + j, f);
        store_lane(row.gate(2) + j, g);
        store_lane(row.gate(3) + j, o);
        store_lane(row.next_state[1] + j, c);
        store_lane(row.next_state[0] + j, o * fused::tanh_lane(c));
    });
}

// dh' (or, with proj_size, dm = dh' W_hr from the driver) in grad_state[0].
template <class T>
void LSTMCell<T>::backward(const fused::BackwardRow<T>& row) const {
    T* dh = row.grad_state[0];
    T* dc = row.grad_state[1];
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dhv = load_lane<V>(dh + j);
        const V i = load_lane<V>(row.gate(0) + j), f = load_lane<V>(row.gate(1) + j);
        const V g = load_lane<V>(row.gate(2) + j), o = load_lane<V>(row.gate(3) + j);
        const V tc = fused::tanh_lane(load_lane<V>(row.next_state[1] + j));
        const V dcv = load_lane<V>(dc + j) + dhv * o * (V(1) - tc * tc);
        store_lane(row.grad_gate(0) + j, dcv * g * i * (V(1) - i));
        store_lane(row.grad_gate(1) + j, dcv * load_lane<V>(row.state[1] + j) * f * (V(1) - f));
        store_lane(row.grad_gate(2) + j, dcv * i * (V(1) - g * g));
        store_lane(row.grad_gate(3) + j, dhv * tc * o * (V(1) - o));
        store_lane(dc + j, dcv * f);
        store_lane(dh + j, V(0));
    });
}

template <class T>
bool LSTMCell<T>::has_tangent_rules() const {
    return true;
}

// The gate row's tangents: σ' = σ(1 - σ), tanh' = 1 - tanh², then ċ' = ḟ c + f ċ + i̇ g + i ġ and
// ḣ' (or ṁ) = ȯ tanh(c') + o (1 - tanh²(c')) ċ'.
template <class T>
void LSTMCell<T>::forward_tangent(const fused::ForwardTangentRow<T>& row) const {
    const std::size_t H = row.hidden;
    T* tp = row.tangent_gates;
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V i = load_lane<V>(row.gate(0) + j), f = load_lane<V>(row.gate(1) + j);
        const V g = load_lane<V>(row.gate(2) + j), o = load_lane<V>(row.gate(3) + j);
        const V ti = i * (V(1) - i) * load_lane<V>(tp + j), tf = f * (V(1) - f) * load_lane<V>(tp + H + j);
        const V tg = (V(1) - g * g) * load_lane<V>(tp + 2 * H + j), to = o * (V(1) - o) * load_lane<V>(tp + 3 * H + j);
        const V tc = tf * load_lane<V>(row.state[1] + j) + f * load_lane<V>(row.tangent_state[1] + j) + ti * g + i * tg;
        const V th = fused::tanh_lane(load_lane<V>(row.next_state[1] + j));
        store_lane(tp + j, ti);
        store_lane(tp + H + j, tf);
        store_lane(tp + 2 * H + j, tg);
        store_lane(tp + 3 * H + j, to);
        store_lane(row.tangent_next_state[1] + j, tc);
        store_lane(row.tangent_next_state[0] + j, to * th + o * (V(1) - th * th) * tc);
    });
}

// The JVP of backward() term by term (σ'' = σ'(1 - 2σ), tanh'' = -2 tanh tanh'); τ = tanh(c').
template <class T>
void LSTMCell<T>::backward_tangent(const fused::BackwardTangentRow<T>& row) const {
    const std::size_t H = row.hidden;
    const T* tg_row = row.tangent_gates;
    T* tdh = row.tangent_grad_state[0];
    T* tdc = row.tangent_grad_state[1];
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dh = load_lane<V>(row.grad_state[0] + j), tdhv = load_lane<V>(tdh + j);
        const V i = load_lane<V>(row.gate(0) + j), f = load_lane<V>(row.gate(1) + j);
        const V g = load_lane<V>(row.gate(2) + j), o = load_lane<V>(row.gate(3) + j);
        const V ti = load_lane<V>(tg_row + j), tf = load_lane<V>(tg_row + H + j);
        const V tg = load_lane<V>(tg_row + 2 * H + j), to = load_lane<V>(tg_row + 3 * H + j);
        const V c = load_lane<V>(row.state[1] + j), tc_before = load_lane<V>(row.tangent_state[1] + j);
        const V tau = fused::tanh_lane(load_lane<V>(row.next_state[1] + j));
        const V dtau = V(1) - tau * tau;
        const V ttau = dtau * load_lane<V>(row.tangent_next_state[1] + j);
        const V dcv = load_lane<V>(row.grad_state[1] + j) + dh * o * dtau;
        const V tdcv = load_lane<V>(tdc + j) + tdhv * o * dtau + dh * to * dtau - V(2) * dh * o * tau * ttau;
        const V si = i * (V(1) - i), sf = f * (V(1) - f), so = o * (V(1) - o), sg = V(1) - g * g;
        store_lane(row.tangent_grad_gate(0) + j, tdcv * g * si + dcv * tg * si + dcv * g * (V(1) - V(2) * i) * ti);
        store_lane(row.tangent_grad_gate(1) + j, tdcv * c * sf + dcv * tc_before * sf + dcv * c * (V(1) - V(2) * f) * tf);
        store_lane(row.tangent_grad_gate(2) + j, tdcv * i * sg + dcv * ti * sg - V(2) * dcv * i * g * tg);
        store_lane(row.tangent_grad_gate(3) + j, tdhv * tau * so + dh * ttau * so + dh * tau * (V(1) - V(2) * o) * to);
        store_lane(tdc + j, tdcv * f + dcv * tf);
        store_lane(tdh + j, V(0));
    });
}

// ---- GRU ----

template <class T>
GRUCell<T>::GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init,
                    const CellOptions& options)
    : FusedCell<GRUCell<T>, T, StandardCell<T>>(input_size, hidden_size, 3, generator, init, options, hidden_size) {}

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
    const T* bias = row.bias_hh;  // [3H]: b_hr, b_hz, b_hn; null without bias
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        // Zeros in place of a missing bias, added all the same so both cases round alike; no
        // buffer of zeros per row in this hot loop.
        auto hidden = [&](std::size_t k) {
            return load_lane<V>(row.recurrent_gate(k) + j) + (bias ? load_lane<V>(bias + k * H + j) : V(T(0)));
        };
        const V r = fused::sigmoid_lane(load_lane<V>(row.gate(0) + j) + hidden(0));
        const V z = fused::sigmoid_lane(load_lane<V>(row.gate(1) + j) + hidden(1));
        const V hidden_n = hidden(2);
        const V n = fused::tanh_lane(load_lane<V>(row.gate(2) + j) + r * hidden_n);
        store_lane(row.gate(0) + j, r);
        store_lane(row.gate(1) + j, z);
        store_lane(row.gate(2) + j, n);
        store_lane(row.saved[0] + j, hidden_n);
        store_lane(row.next_state[0] + j, n + z * (load_lane<V>(row.state[0] + j) - n));
    });
}

// Input and hidden sides agree except in the n block, where the hidden side carries r.
template <class T>
void GRUCell<T>::backward(const fused::BackwardRow<T>& row) const {
    T* dh = row.grad_state[0];
    lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dhv = load_lane<V>(dh + j);
        const V r = load_lane<V>(row.gate(0) + j), z = load_lane<V>(row.gate(1) + j), n = load_lane<V>(row.gate(2) + j);
        const V dpn = dhv * (V(1) - z) * (V(1) - n * n);
        const V dpr = dpn * load_lane<V>(row.saved[0] + j) * r * (V(1) - r);
        const V dpz = dhv * (load_lane<V>(row.state[0] + j) - n) * z * (V(1) - z);
        store_lane(row.grad_gate(0) + j, dpr);
        store_lane(row.grad_gate(1) + j, dpz);
        store_lane(row.grad_gate(2) + j, dpn);
        store_lane(row.grad_recurrent_gate(0) + j, dpr);
        store_lane(row.grad_recurrent_gate(1) + j, dpz);
        store_lane(row.grad_recurrent_gate(2) + j, dpn * r);
        store_lane(dh + j, dhv * z);
    });
}

template <class T>
bool GRUCell<T>::has_tangent_rules() const {
    return true;
}

// With p = W_hn h + b_hn (saved[0]): ṙ = r(1 - r)(ṗre_r + ḣid_r), ż likewise, ṅ = (1 - n²)(ṗre_n +
// ṙ p + r ṗ), ḣ' = ṅ + ż (h - n) + z (ḣ - ṅ).
template <class T>
void GRUCell<T>::forward_tangent(const fused::ForwardTangentRow<T>& row) const {
    const std::size_t H = row.hidden;
    const T* tbias = row.tangent_bias_hh;
    T* tp = row.tangent_gates;
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        auto thidden = [&](std::size_t k) {
            const V product = row.tangent_recurrent ? load_lane<V>(row.tangent_recurrent_gate(k) + j) : V(T(0));
            return tbias ? product + load_lane<V>(tbias + k * H + j) : product;
        };
        const V r = load_lane<V>(row.gate(0) + j), z = load_lane<V>(row.gate(1) + j), n = load_lane<V>(row.gate(2) + j);
        const V tr = r * (V(1) - r) * (load_lane<V>(tp + j) + thidden(0));
        const V tz = z * (V(1) - z) * (load_lane<V>(tp + H + j) + thidden(1));
        const V thn = thidden(2);
        const V tn = (V(1) - n * n) * (load_lane<V>(tp + 2 * H + j) + tr * load_lane<V>(row.saved[0] + j) + r * thn);
        const V h = load_lane<V>(row.state[0] + j), th = load_lane<V>(row.tangent_state[0] + j);
        store_lane(tp + j, tr);
        store_lane(tp + H + j, tz);
        store_lane(tp + 2 * H + j, tn);
        store_lane(row.tangent_saved[0] + j, thn);
        store_lane(row.tangent_next_state[0] + j, tn + tz * (h - n) + z * (th - tn));
    });
}

template <class T>
void GRUCell<T>::backward_tangent(const fused::BackwardTangentRow<T>& row) const {
    T* tdh = row.tangent_grad_state[0];
    const std::size_t H = row.hidden;
    lanes<T>(H, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        const V dh = load_lane<V>(row.grad_state[0] + j), tdhv = load_lane<V>(tdh + j);
        const V r = load_lane<V>(row.gate(0) + j), z = load_lane<V>(row.gate(1) + j), n = load_lane<V>(row.gate(2) + j);
        const V tr = load_lane<V>(row.tangent_gates + j), tz = load_lane<V>(row.tangent_gates + H + j);
        const V tn = load_lane<V>(row.tangent_gates + 2 * H + j);
        const V p = load_lane<V>(row.saved[0] + j), tpv = load_lane<V>(row.tangent_saved[0] + j);
        const V h = load_lane<V>(row.state[0] + j), th = load_lane<V>(row.tangent_state[0] + j);
        const V sn = V(1) - n * n, sr = r * (V(1) - r), sz = z * (V(1) - z);
        const V dpn = dh * (V(1) - z) * sn;
        const V tdpn = tdhv * (V(1) - z) * sn - dh * tz * sn - V(2) * dh * (V(1) - z) * n * tn;
        const V tdpr = tdpn * p * sr + dpn * tpv * sr + dpn * p * (V(1) - V(2) * r) * tr;
        const V tdpz = tdhv * (h - n) * sz + dh * (th - tn) * sz + dh * (h - n) * (V(1) - V(2) * z) * tz;
        store_lane(row.tangent_grad_gate(0) + j, tdpr);
        store_lane(row.tangent_grad_gate(1) + j, tdpz);
        store_lane(row.tangent_grad_gate(2) + j, tdpn);
        store_lane(row.tangent_grad_recurrent_gate(0) + j, tdpr);
        store_lane(row.tangent_grad_recurrent_gate(1) + j, tdpz);
        store_lane(row.tangent_grad_recurrent_gate(2) + j, tdpn * r + dpn * tr);
        store_lane(tdh + j, tdhv * z + dh * tz);
    });
}

template class StandardCell<float>;
template class StandardCell<double>;
template class RNNCell<float>;
template class RNNCell<double>;
template class LSTMCell<float>;
template class LSTMCell<double>;
template class GRUCell<float>;
template class GRUCell<double>;

}  // namespace rw::nn
