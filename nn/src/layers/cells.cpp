#include "rewind/nn/layers/cells.hpp"

#include <cmath>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/ops.hpp>

#include "rewind/nn/fused/kernels.hpp"
#include "rewind/nn/layers/init.hpp"

namespace rw::nn {

template <class T>
GatedCell<T>::GatedCell(std::size_t input_size, std::size_t hidden_size, std::size_t gates, Generator& generator,
                        const CellInit& init)
    : RecurrentCell<T>(input_size, hidden_size), gates_(gates) {
    if (input_size == 0 || hidden_size == 0) throw std::invalid_argument("recurrent cell: sizes must be positive");
    const std::size_t rows = gates * hidden_size;
    const double bound = 1.0 / std::sqrt(double(hidden_size));
    // Draw in PyTorch's parameter order so a seed fixes every parameter whatever the options.
    auto w_ih = init::uniform<T>({rows, input_size}, -bound, bound, generator);
    auto w_hh = init::uniform<T>({rows, hidden_size}, -bound, bound, generator);
    auto b_ih = init::uniform<T>({rows}, -bound, bound, generator);
    auto b_hh = init::uniform<T>({rows}, -bound, bound, generator);
    if (init.xavier_input) w_ih = init::xavier_uniform<T>({rows, input_size}, generator);
    if (init.orthogonal_recurrent) w_hh = init::orthogonal<T>({rows, hidden_size}, generator);
    if (init.xavier_input || init.orthogonal_recurrent) {
        b_ih.fill(T(0));
        b_hh.fill(T(0));
    }
    weight_ih_ = this->register_parameter("weight_ih", Tensor<T>(std::move(w_ih)));
    weight_hh_ = this->register_parameter("weight_hh", Tensor<T>(std::move(w_hh)));
    bias_ih_ = this->register_parameter("bias_ih", Tensor<T>(std::move(b_ih)));
    bias_hh_ = this->register_parameter("bias_hh", Tensor<T>(std::move(b_hh)));
}

template <class T>
Tensor<T> GatedCell<T>::project_input(const Tensor<T>& input, const Tensor<T>& bias) const {
    if (input.dim() != 3 || input.size(2) != this->input_size())
        throw_shape_error(this->kind(), "expects input [T, B, input_size] matching weight_ih [G*H, input_size]",
                          input.shape(), weight_ih_.shape());
    // One GEMM over all T*B rows, straight from and to [T, B, *] (no reshape copies).
    return add(gemm(input, weight_ih_, false, true), bias);
}

template <class T>
std::optional<SequenceResult<T>> GatedCell<T>::run_sequence(const Tensor<T>& input, const State<T>& initial_state,
                                                            const std::vector<std::int64_t>& lengths,
                                                            bool reverse) const {
    fused::CellType type;
    if (!fused::parse_cell_type(this->kind(), type)) return std::nullopt;
    return fused::run_sequence<T>(type, input, initial_state, weight_ih_, weight_hh_, bias_ih_, bias_hh_, lengths,
                                  reverse);
}

// ---- RNN ----

template <class T>
RNNCell<T>::RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
                    const CellInit& init)
    : GatedCell<T>(input_size, hidden_size, 1, generator, init), nonlinearity_(nonlinearity) {}

template <class T>
Tensor<T> RNNCell<T>::prepare_input(const Tensor<T>& input) const {
    return this->project_input(input, add(this->bias_ih_, this->bias_hh_));
}

template <class T>
State<T> RNNCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    Tensor<T> pre = add(x_t, gemm(state[0], this->weight_hh_, false, true));
    return {nonlinearity_ == Nonlinearity::tanh ? tanh(pre) : relu(pre)};
}

// ---- LSTM ----

template <class T>
LSTMCell<T>::LSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init)
    : GatedCell<T>(input_size, hidden_size, 4, generator, init) {
    if (init.forget_bias != 0.0) {
        // Gate order i, f, g, o: the forget gate is the second block.
        for (auto* bias : {&this->bias_ih_, &this->bias_hh_})
            for (std::size_t j = hidden_size; j < 2 * hidden_size; ++j)
                bias->mutable_value()(j) += static_cast<T>(init.forget_bias / 2);
    }
}

template <class T>
Tensor<T> LSTMCell<T>::prepare_input(const Tensor<T>& input) const {
    return this->project_input(input, add(this->bias_ih_, this->bias_hh_));
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
    return {next_h, next_c};
}

// ---- GRU ----

template <class T>
GRUCell<T>::GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init)
    : GatedCell<T>(input_size, hidden_size, 3, generator, init) {}

template <class T>
Tensor<T> GRUCell<T>::prepare_input(const Tensor<T>& input) const {
    // b_hh stays out: its n-block sits inside the reset product.
    return this->project_input(input, this->bias_ih_);
}

template <class T>
State<T> GRUCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    const auto& h = state[0];
    auto input_gates = chunk(x_t, 3, 1);
    auto hidden_gates = chunk(add(gemm(h, this->weight_hh_, false, true), this->bias_hh_), 3, 1);
    Tensor<T> reset = sigmoid(add(input_gates[0], hidden_gates[0]));
    Tensor<T> update = sigmoid(add(input_gates[1], hidden_gates[1]));
    Tensor<T> candidate = tanh(add(input_gates[2], mul(reset, hidden_gates[2])));
    // (1 - z) n + z h, written as n + z (h - n).
    return {add(candidate, mul(update, sub(h, candidate)))};
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
