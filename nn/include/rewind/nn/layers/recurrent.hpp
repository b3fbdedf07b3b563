#pragma once
// The one layer machinery for every cell: stacking, both directions, variable lengths with
// PyTorch's packed-sequence semantics, initial states (zeros, given or learned), dropout between
// layers, and the final state that truncated BPTT carries to the next chunk.
//
// Parameters are named as in torch.nn.RNN/LSTM/GRU: each cell parameter "weight_ih" of layer k
// becomes "weight_ih_l<k>", with "_reverse" for the backward direction.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <rewind/autograd/random.hpp>

#include "rewind/nn/layers/cell.hpp"
#include "rewind/nn/layers/cells.hpp"
#include "rewind/nn/layers/recompute.hpp"

namespace rw::nn {

enum class InitialState { zeros, learned };

// fused (the default): the cell's hand-written fused rules (fused/cell_rules.hpp) run by the
// library's sequence driver, one tape op per layer and direction; generic: the tape records
// every op of every step() call. Both give the same numbers.
// Asking for fused where it cannot run is not an error: the layer runs step() instead, and says
// so through uses_fused() and path_note(). That happens for a cell without fused rules (a user's
// cell that has not written them), a subclass of a cell with rules (rules are never inherited),
// and a layer with a step observer (it needs every step on the tape).
enum class ExecutionPath { fused, generic };

struct RecurrentOptions {
    std::size_t input_size = 0;
    std::size_t hidden_size = 0;
    std::size_t num_layers = 1;
    bool bidirectional = false;
    double dropout = 0.0;      // in [0, 1]: between layers, in training mode only (Recurrent::set_dropout changes it)
    bool batch_first = false;  // input and output [B, T, *] instead of [T, B, *]
    // Used when forward() is given no initial state: zeros, or a trainable vector per layer,
    // direction and state tensor ("initial_h_l0", "initial_c_l0_reverse", ...).
    InitialState initial_state = InitialState::zeros;
    ExecutionPath path = ExecutionPath::fused;
    std::uint64_t seed = 0;  // initialisation and dropout
    CellInit init = {};
    // PyTorch's bias=False: no bias_ih_l<k>, bias_hh_l<k> (built-in cells).
    bool bias = true;
    // LSTM only, PyTorch's proj_size: h (and so the output and the next layer's input) has
    // proj_size units, c keeps hidden_size; adds weight_hr_l<k> [proj_size, hidden_size].
    std::size_t proj_size = 0;
    // Training on long sequences in bounded memory (recompute.hpp), on either path. Not used
    // with a step observer or probe, which need every step on the tape.
    RecomputeOptions recompute = {};

    CellOptions cell_options() const { return {.bias = bias, .proj_size = proj_size}; }
};

// The final states are stacked as PyTorch's h_n and c_n: [L*D, B, H], layer-major, then
// direction (index 2*l + d of a bidirectional layer, d = 1 the reverse direction); take one layer
// and direction with Recurrent::state_of().
template <class T>
struct RecurrentResult {
    Tensor<T> output;               // [T, B, D*H] (or [B, T, D*H] when batch_first); [B, H] from step(); H is proj_size if set
    std::vector<Tensor<T>> state;   // per state tensor (h, then c for LSTM): [L*D, B, H] (h: proj_size if set)
    const Tensor<T>& h_n() const { return state.at(0); }
    const Tensor<T>& c_n() const { return state.at(1); }
};

// Called with each step's hidden state as it is computed, e.g. to register a gradient hook
// that traces dL/dh_t over time.
template <class T>
using StepObserver = std::function<void(std::size_t layer, std::size_t direction, std::size_t step,
                                        const Tensor<T>& hidden)>;

// Called with each step's new hidden state h_t as the cell computed it; what it returns is h_t
// from then on, for the step's output and the next step (rows whose sequence has ended keep
// their state regardless). E.g. h_t + d_t with a zero leaf d_t: d_t's gradient is dL/dh_t, and
// perturbing d_t moves h_t, which is how nn::gradcheck_layer_per_step checks dL/dh_t.
template <class T>
using StepProbe = std::function<Tensor<T>(std::size_t layer, std::size_t direction, std::size_t step,
                                          const Tensor<T>& hidden)>;

template <class T>
class Recurrent : public Module<T> {
public:
    Recurrent(const CellFactory<T>& factory, const RecurrentOptions& options);

    // input [T, B, I]; initial_state empty (zeros or learned) or one [L*D, B, H] tensor per
    // state tensor; lengths, when given, one per sequence in 1..T.
    RecurrentResult<T> forward(const Tensor<T>& input, const std::vector<Tensor<T>>& initial_state = {},
                               const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt);

    // One time step of every layer on raw input x [B, input_size] (a decoder generating one token
    // at a time): state as forward()'s initial_state ([L, B, H] per state tensor, or empty for
    // the zeros or learned initial state); returns output [B, H] (the last layer's h) and the
    // next state [L, B, H]. Unidirectional layers only: a reverse direction needs the whole
    // sequence (step one cell with cell(layer, direction).forward_step instead).
    RecurrentResult<T> step(const Tensor<T>& x, const std::vector<Tensor<T>>& state = {});

    // One layer and direction of a stacked state [L*D, B, H] (h_n, c_n or an initial state): [B, H].
    Tensor<T> state_of(const Tensor<T>& stacked, std::size_t layer, std::size_t direction = 0) const;

    const RecurrentOptions& options() const { return options_; }
    std::size_t num_directions() const { return options_.bidirectional ? 2 : 1; }
    const RecurrentCell<T>& cell(std::size_t layer, std::size_t direction) const;
    std::vector<std::string> state_names() const { return cells_.front()->state_names(); }
    // The width of state tensor s: hidden_size, or proj_size for an LSTM's h with projections.
    std::size_t state_size(std::size_t s) const { return cells_.front()->state_size(s); }
    // An observer needs every step's hidden state on the tape, so it implies the generic path.
    void set_step_observer(StepObserver<T> observer) { observer_ = std::move(observer); }
    // A probe, like an observer, needs every step on the tape: it implies the generic path.
    void set_step_probe(StepProbe<T> probe) { probe_ = std::move(probe); }
    void set_path(ExecutionPath path) { options_.path = path; }
    // PyTorch's `rnn.dropout = p` on an existing layer: from the next forward on; p in [0, 1].
    void set_dropout(double dropout);
    void set_recompute(const RecomputeOptions& recompute) { options_.recompute = recompute; }
    // The segment length the last forward() recomputed with (0: every step was kept).
    std::size_t last_recompute_segment() const { return last_segment_; }
    ExecutionPath path() const { return options_.path; }
    // Whether every layer and direction of the last forward() ran on fused rules.
    bool uses_fused() const { return last_fused_; }
    // Why the last forward() on the fused path ran step() instead (empty when it ran fused, or
    // when the generic path was asked for), e.g. "layer 0 direction 0: the cell has no fused rules".
    const std::string& path_note() const { return path_note_; }
    Generator& generator() { return generator_; }

private:
    struct Sequence;
    SequenceResult<T> run_direction(const RecurrentCell<T>& cell, const Tensor<T>& input, State<T> state,
                                         const Sequence& sequence, std::size_t layer, std::size_t direction);
    static State<T> run_steps(const RecurrentCell<T>& cell, const std::vector<Tensor<T>>& prepared, std::size_t first_t,
                              State<T> state, const Sequence& sequence, std::size_t layer, std::size_t direction,
                              std::size_t k0, std::size_t k1, std::vector<Tensor<T>>& outputs,
                              const StepProbe<T>* probe = nullptr, const StepObserver<T>* observer = nullptr);
    SequenceResult<T> run_segments(std::size_t layer, std::size_t direction, const Tensor<T>& input, State<T> state,
                                   const Sequence& sequence, std::size_t segment) const;
    std::size_t segment_for(const RecurrentCell<T>& cell, const Sequence& sequence) const;
    State<T> initial_state_for(std::size_t layer, std::size_t direction, const std::vector<Tensor<T>>& given,
                               std::size_t batch) const;
    void check_given_state(const std::vector<Tensor<T>>& given, std::size_t batch) const;
    static void check_dropout(double dropout);

    RecurrentOptions options_;
    Generator generator_;
    std::vector<std::shared_ptr<RecurrentCell<T>>> cells_;  // layer-major, then direction
    std::vector<std::vector<Tensor<T>>> learned_initial_;    // same order, one per state tensor
    StepObserver<T> observer_;
    StepProbe<T> probe_;
    bool last_fused_ = false;
    std::size_t last_segment_ = 0;
    std::string path_note_;
};

// torch.nn.RNN / LSTM / GRU.
template <class T>
std::shared_ptr<Recurrent<T>> make_rnn(const RecurrentOptions& options, Nonlinearity nonlinearity = Nonlinearity::tanh);
template <class T>
std::shared_ptr<Recurrent<T>> make_lstm(const RecurrentOptions& options);
template <class T>
std::shared_ptr<Recurrent<T>> make_gru(const RecurrentOptions& options);
// By the cell's name in the table of cells (cell_table.hpp): PyTorch's mode names.
template <class T>
std::shared_ptr<Recurrent<T>> make_recurrent(const std::string& cell, const RecurrentOptions& options);

extern template class Recurrent<float>;
extern template class Recurrent<double>;

}  // namespace rw::nn
