#pragma once
// Fused whole-sequence kernels for PyTorch's RNN (tanh, relu), LSTM and GRU cells.
//
// One layer-direction over the whole sequence is ONE tape op
//   inputs  {x [T,B,I], weight_ih [G*H,I], weight_hh [G*H,H], bias_ih [G*H], bias_hh [G*H], h0 [B,H] (, c0 [B,H])}
//   outputs {output [T,B,H], h_n [B,H] (, c_n [B,H])}
// with a hand-written backward:
//   forward  - the input projection of all steps as one GEMM ([T*B, I] x W_ih^T, pre-filled with
//              the biases, beta = 1); per step one recurrent GEMM accumulating into that step's
//              gate rows, then one xsimd pass for every gate non-linearity and the state update.
//              Saved for backward: the gate activations, the state before each step (h, and c
//              for LSTM) and, for GRU, W_hn h + b_hn.
//   backward - per step one xsimd pass for the gate derivatives and one GEMM for dh_{t-1};
//              dx, dW_ih, dW_hh each one GEMM over all steps, the biases as column sums.
//
// Semantics are PyTorch's exactly (LSTM gates i, f, g, o; GRU r, z, n with b_hn inside the reset
// product), lengths follow packed sequences: a finished row keeps its state and outputs zeros,
// and the reverse direction starts at each row's own last step.
//
// Element-wise math uses xsimd's vectorised exp and tanh for float and double alike (the same
// functions xtensor uses on the generic path; no reduced-precision approximations).
//
// The backward works on raw arrays, so it is not differentiable again: a backward with
// create_graph = true throws GraphError; use ExecutionPath::generic for higher-order gradients.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <rewind/autograd/tensor.hpp>

#include "rewind/nn/layers/cell.hpp"

namespace rw::nn::fused {

enum class CellType { rnn_tanh, rnn_relu, lstm, gru };

// "rnn_tanh", "rnn_relu", "lstm", "gru" (RecurrentCell::kind()); false for anything else.
bool parse_cell_type(const std::string& kind, CellType& type);
std::string cell_type_name(CellType type);
// G: 1, 4 or 3.
std::size_t gate_count(CellType type);
std::size_t state_count(CellType type);  // 2 for LSTM (h, c), else 1

// Runs one layer-direction over the whole sequence as one tape op. input [T, B, I];
// initial_state one [B, H] tensor per state tensor; lengths empty (all T steps) or one per row
// in 1..T; reverse runs from each row's last step to its first.
template <class T>
SequenceResult<T> run_sequence(CellType type, const Tensor<T>& input, const State<T>& initial_state,
                               const Tensor<T>& weight_ih, const Tensor<T>& weight_hh, const Tensor<T>& bias_ih,
                               const Tensor<T>& bias_hh, const std::vector<std::int64_t>& lengths, bool reverse);

// What the op keeps alive for its backward per time step, besides its inputs and outputs
// (gate activations, states before the step, GRU's W_hn h + b_hn, the row mask).
std::size_t saved_bytes_per_step(CellType type, std::size_t batch, std::size_t hidden, std::size_t element_size,
                                 bool with_lengths = false);

namespace detail {

// The per-step element-wise passes, one row of the batch after another; `active` (one flag
// per row, null when every row runs this step) masks finished sequences.
template <class T>
struct ForwardStep {
    std::size_t batch = 0, hidden = 0;
    T* gates = nullptr;             // [B, G*H]: pre-activations in, activations out
    const T* hidden_gates = nullptr;  // GRU: [B, 3H] = h W_hh^T (no bias)
    const T* bias_hh = nullptr;     // GRU: [3H]
    T* hidden_n = nullptr;          // GRU: [B, H] W_hn h + b_hn, saved
    const T* h_prev = nullptr;
    T* h_next = nullptr;
    const T* c_prev = nullptr;      // LSTM
    T* c_next = nullptr;            // LSTM
    T* output = nullptr;            // [B, H]: h_next, zeros in finished rows
    const std::uint8_t* active = nullptr;
};

template <class T>
struct BackwardStep {
    std::size_t batch = 0, hidden = 0;
    const T* gates = nullptr;       // saved activations [B, G*H]
    const T* hidden_n = nullptr;    // GRU
    const T* h_prev = nullptr;      // GRU
    const T* c_prev = nullptr;      // LSTM
    const T* c_next = nullptr;      // LSTM
    const T* grad_output = nullptr;  // [B, H] or null
    T* grad_h = nullptr;            // in: dL/dh_t carried from later steps; out: the direct part of dL/dh_{t-1}
    T* grad_c = nullptr;            // LSTM, in: dL/dc_t; out: dL/dc_{t-1}
    T* grad_gates = nullptr;        // [B, G*H]: dL/d(input-side pre-activation)
    T* grad_hidden_gates = nullptr;  // GRU: [B, 3H] dL/d(h W_hh^T + b_hh)
    const std::uint8_t* active = nullptr;
};

template <class T> void rnn_forward_step(const ForwardStep<T>& step, bool relu);
template <class T> void lstm_forward_step(const ForwardStep<T>& step);
template <class T> void gru_forward_step(const ForwardStep<T>& step);
template <class T> void rnn_backward_step(const BackwardStep<T>& step, bool relu);
template <class T> void lstm_backward_step(const BackwardStep<T>& step);
template <class T> void gru_backward_step(const BackwardStep<T>& step);
// sums[j] (+)= sum over rows of matrix[row, j]; matrix [rows, cols].
template <class T> void column_sums(const T* matrix, std::size_t rows, std::size_t cols, T* sums, bool accumulate);
// Every row of out [rows, cols] set to a + b (b may be null).
template <class T> void fill_rows(T* out, std::size_t rows, std::size_t cols, const T* a, const T* b);

}  // namespace detail

}  // namespace rw::nn::fused
