#pragma once
// PyTorch's three recurrent cells, with exactly its equations, parameter names and shapes:
//   weight_ih [G*H, I], weight_hh [G*H, H], bias_ih [G*H], bias_hh [G*H]
// with G = 1 (RNN), 4 (LSTM, gate order i, f, g, o) or 3 (GRU, gate order r, z, n).
// Each is its own fused rules (fused/cell_rules.hpp), written beside its step() in cells.cpp
// through the same public interface a user's cell uses; a subclass does not inherit them.

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

protected:
    // x W_ih^T + bias over all steps at once: [T, B, I] -> [T, B, G*H].
    Tensor<T> project_input(const Tensor<T>& input, const Tensor<T>& bias) const;
    // The four standard tensors, for the cells' fused rules.
    fused::CellWeights<T> standard_weights() const { return {weight_ih_, bias_ih_, weight_hh_, bias_hh_, {}, {}}; }

    std::size_t gates_;
    Tensor<T> weight_ih_, weight_hh_, bias_ih_, bias_hh_;
};

// h' = f(W_ih x + b_ih + W_hh h + b_hh), f = tanh or relu.
template <class T>
class RNNCell : public GatedCell<T>, public fused::CellRules<T> {
public:
    RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
            const CellInit& init = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;
    Nonlinearity nonlinearity() const { return nonlinearity_; }

    const fused::CellRules<T>* fused_rules() const override { return this; }
    const std::type_info& rules_cell_type() const override { return typeid(RNNCell); }
    fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 1}; }
    std::vector<std::string> gate_names() const override { return {"pre-activation"}; }
    fused::CellWeights<T> weights() const override { return this->standard_weights(); }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;

private:
    Nonlinearity nonlinearity_;
};

// i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh);  c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c').
template <class T>
class LSTMCell : public GatedCell<T>, public fused::CellRules<T> {
public:
    LSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {});
    std::vector<std::string> state_names() const override { return {"h", "c"}; }
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;

    const fused::CellRules<T>* fused_rules() const override { return this; }
    const std::type_info& rules_cell_type() const override { return typeid(LSTMCell); }
    fused::CellLayout layout() const override { return {.gates = 4, .states = 2, .recurrent = 4}; }
    std::vector<std::string> gate_names() const override { return {"input", "forget", "cell", "output"}; }
    fused::CellWeights<T> weights() const override { return this->standard_weights(); }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;
};

// r = σ(W_ir x + b_ir + W_hr h + b_hr);  z = σ(W_iz x + b_iz + W_hz h + b_hz);
// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn));  h' = (1 - z) ⊙ n + z ⊙ h.
template <class T>
class GRUCell : public GatedCell<T>, public fused::CellRules<T> {
public:
    GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;

    // h W_hh^T goes to its own buffer: b_hn and the reset gate act on it inside the rule; the
    // rule saves W_hn h + b_hn for the backward.
    const fused::CellRules<T>* fused_rules() const override { return this; }
    const std::type_info& rules_cell_type() const override { return typeid(GRUCell); }
    fused::CellLayout layout() const override {
        return {.gates = 3, .states = 1, .recurrent = 3, .recurrent_into_gates = false, .saved = 1};
    }
    std::vector<std::string> gate_names() const override { return {"reset", "update", "new"}; }
    fused::CellWeights<T> weights() const override { return this->standard_weights(); }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;
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
