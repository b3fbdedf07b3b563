#pragma once
// PyTorch's three recurrent cells, with exactly its equations, parameter names and shapes:
//   weight_ih [G*H, I], weight_hh [G*H, H], bias_ih [G*H], bias_hh [G*H]
// with G = 1 (RNN), 4 (LSTM, gate order i, f, g, o) or 3 (GRU, gate order r, z, n).

#include "rewind/nn/layers/cell.hpp"

namespace rw::nn {

enum class Nonlinearity { tanh, relu };

struct CellInit {
    // PyTorch's default: every parameter from U(-1/sqrt(H), 1/sqrt(H)).
    // The alternatives: orthogonal recurrent weights and Xavier input weights (biases zero).
    bool orthogonal_recurrent = false;
    bool xavier_input = false;
    // Added to the LSTM forget-gate bias (both bias_ih and bias_hh get half), e.g. 1.0.
    double forget_bias = 0.0;
};

// The four standard parameters shared by all three cells.
template <class T>
class GatedCell : public RecurrentCell<T> {
public:
    GatedCell(std::size_t input_size, std::size_t hidden_size, std::size_t gates, Generator& generator,
              const CellInit& init);

    const Tensor<T>& weight_ih() const { return weight_ih_; }
    const Tensor<T>& weight_hh() const { return weight_hh_; }
    const Tensor<T>& bias_ih() const { return bias_ih_; }
    const Tensor<T>& bias_hh() const { return bias_hh_; }
    std::size_t gates() const { return gates_; }

    // The fused whole-sequence kernel (fused.hpp) for the four standard kinds; a subclass that
    // changes step() must override this to return std::nullopt (or its own kernel).
    std::optional<SequenceResult<T>> run_sequence(const Tensor<T>& input, const State<T>& initial_state,
                                                  const std::vector<std::int64_t>& lengths,
                                                  bool reverse) const override;

protected:
    // x W_ih^T + bias over all steps at once: [T, B, I] -> [T, B, G*H].
    Tensor<T> project_input(const Tensor<T>& input, const Tensor<T>& bias) const;

    std::size_t gates_;
    Tensor<T> weight_ih_, weight_hh_, bias_ih_, bias_hh_;
};

// h' = f(W_ih x + b_ih + W_hh h + b_hh), f = tanh or relu.
template <class T>
class RNNCell : public GatedCell<T> {
public:
    RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
            const CellInit& init = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override { return nonlinearity_ == Nonlinearity::tanh ? "rnn_tanh" : "rnn_relu"; }

private:
    Nonlinearity nonlinearity_;
};

// i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh);  c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c').
template <class T>
class LSTMCell : public GatedCell<T> {
public:
    LSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {});
    std::vector<std::string> state_names() const override { return {"h", "c"}; }
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override { return "lstm"; }
};

// r = σ(W_ir x + b_ir + W_hr h + b_hr);  z = σ(W_iz x + b_iz + W_hz h + b_hz);
// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn));  h' = (1 - z) ⊙ n + z ⊙ h.
template <class T>
class GRUCell : public GatedCell<T> {
public:
    GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override { return "gru"; }
};

extern template class GatedCell<float>;
extern template class GatedCell<double>;
extern template class RNNCell<float>;
extern template class RNNCell<double>;
extern template class LSTMCell<float>;
extern template class LSTMCell<double>;
extern template class GRUCell<float>;
extern template class GRUCell<double>;

}  // namespace rw::nn
