#pragma once
// PyTorch's three recurrent cells, with exactly its equations, parameter names and shapes:
//   weight_ih [G*H, I], weight_hh [G*H, H], bias_ih [G*H], bias_hh [G*H]
// with G = 1 (RNN), 4 (LSTM, gate order i, f, g, o) or 3 (GRU, gate order r, z, n).
// With bias = false the two biases do not exist (as PyTorch's bias=False). An LSTM with
// proj_size P > 0 also has weight_hr [P, H]: h' = W_hr (σ(o) tanh(c')) has size P (c' keeps H),
// and weight_hh is [4H, P].
// Each is its own fused rules (fused/cell_rules.hpp), written beside its step() in cells.cpp
// through the same public interface a user's cell uses (FusedCell, cell.hpp); a subclass does not
// inherit them.

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

// PyTorch's structural options of the cells (as in torch.nn.RNN/LSTM/GRU).
struct CellOptions {
    bool bias = true;            // false: no bias_ih, bias_hh
    std::size_t proj_size = 0;   // LSTM only: > 0 projects h to this size (must be < hidden_size)
};

// PyTorch's four standard parameters, shared by all three cells (the tanh RNN's one block is
// no gate, hence not "gated"); `gates()` counts the G blocks of width H.
template <class T>
class StandardCell : public RecurrentCell<T> {
public:
    // recurrent_size: the width of the h that weight_hh multiplies (hidden_size, or LSTM's proj_size).
    StandardCell(std::size_t input_size, std::size_t hidden_size, std::size_t gates, Generator& generator,
              const CellInit& init, const CellOptions& options, std::size_t recurrent_size);

    const Tensor<T>& weight_ih() const { return weight_ih_; }
    const Tensor<T>& weight_hh() const { return weight_hh_; }
    const Tensor<T>& bias_ih() const { return bias_ih_; }
    const Tensor<T>& bias_hh() const { return bias_hh_; }  // undefined (both) without bias
    bool has_bias() const { return bias_ih_.defined(); }
    std::size_t gates() const { return gates_; }

protected:
    // x W_ih^T + bias over all steps at once: [T, B, I] -> [T, B, G*H]; bias may be undefined.
    Tensor<T> project_input(const Tensor<T>& input, const Tensor<T>& bias) const;
    // b_ih + b_hh, or undefined without bias.
    Tensor<T> summed_bias() const;
    // The four standard tensors, for the cells' fused rules.
    fused::CellWeights<T> standard_weights() const {
        return {.input_weight = weight_ih_, .input_bias = bias_ih_, .recurrent_weight = weight_hh_, .recurrent_bias = bias_hh_};
    }

    std::size_t gates_;
    Tensor<T> weight_ih_, weight_hh_, bias_ih_, bias_hh_;
};

// h' = f(W_ih x + b_ih + W_hh h + b_hh), f = tanh or relu.
template <class T>
class RNNCell : public FusedCell<RNNCell<T>, T, StandardCell<T>> {
public:
    RNNCell(std::size_t input_size, std::size_t hidden_size, Nonlinearity nonlinearity, Generator& generator,
            const CellInit& init = {}, const CellOptions& options = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;
    Nonlinearity nonlinearity() const { return nonlinearity_; }

    fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 1}; }
    std::vector<std::string> gate_names() const override { return {"pre-activation"}; }
    fused::CellWeights<T> weights() const override { return this->standard_weights(); }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;
    bool has_tangent_rules() const override;
    void forward_tangent(const fused::ForwardTangentRow<T>& row) const override;
    void backward_tangent(const fused::BackwardTangentRow<T>& row) const override;

private:
    Nonlinearity nonlinearity_;
};

// i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh);  c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c'),
// or with proj_size P: h' = W_hr (σ(o) tanh(c')), [B, P].
template <class T>
class LSTMCell : public FusedCell<LSTMCell<T>, T, StandardCell<T>> {
public:
    LSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {},
             const CellOptions& options = {});
    std::vector<std::string> state_names() const override { return {"h", "c"}; }
    std::size_t state_size(std::size_t state) const override {
        return state == 0 && proj_size() > 0 ? proj_size() : this->hidden_size();
    }
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;
    std::size_t proj_size() const { return weight_hr_.defined() ? weight_hr_.size(0) : 0; }
    const Tensor<T>& weight_hr() const { return weight_hr_; }  // [P, H], undefined without proj_size

    // With proj_size the rule writes m = σ(o) tanh(c') and the driver's output projection makes
    // h' = m W_hr^T (fused/cell_rules.hpp): the same rule serves both.
    fused::CellLayout layout() const override {
        return {.gates = 4, .states = 2, .recurrent = 4, .projection = proj_size() > 0};
    }
    std::vector<std::string> gate_names() const override { return {"input", "forget", "cell", "output"}; }
    fused::CellWeights<T> weights() const override {
        fused::CellWeights<T> weights = this->standard_weights();
        weights.projection_weight = weight_hr_;
        return weights;
    }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;
    bool has_tangent_rules() const override;
    void forward_tangent(const fused::ForwardTangentRow<T>& row) const override;
    void backward_tangent(const fused::BackwardTangentRow<T>& row) const override;

private:
    Tensor<T> weight_hr_;
};

// r = σ(W_ir x + b_ir + W_hr h + b_hr);  z = σ(W_iz x + b_iz + W_hz h + b_hz);
// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn));  h' = (1 - z) ⊙ n + z ⊙ h.
template <class T>
class GRUCell : public FusedCell<GRUCell<T>, T, StandardCell<T>> {
public:
    GRUCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, const CellInit& init = {},
            const CellOptions& options = {});
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;
    std::string kind() const override;

    // h W_hh^T goes to its own buffer: b_hn and the reset gate act on it inside the rule; the
    // rule saves W_hn h + b_hn for the backward.
    fused::CellLayout layout() const override {
        return {.gates = 3, .states = 1, .recurrent = 3, .recurrent_into_gates = false, .saved = 1};
    }
    std::vector<std::string> gate_names() const override { return {"reset", "update", "new"}; }
    fused::CellWeights<T> weights() const override { return this->standard_weights(); }
    void forward(const fused::ForwardRow<T>& row) const override;
    void backward(const fused::BackwardRow<T>& row) const override;
    bool has_tangent_rules() const override;
    void forward_tangent(const fused::ForwardTangentRow<T>& row) const override;
    void backward_tangent(const fused::BackwardTangentRow<T>& row) const override;
};

extern template class StandardCell<float>;
extern template class StandardCell<double>;
extern template class RNNCell<float>;
extern template class RNNCell<double>;
extern template class LSTMCell<float>;
extern template class LSTMCell<double>;
extern template class GRUCell<float>;
extern template class GRUCell<double>;

}  // namespace rw::nn
