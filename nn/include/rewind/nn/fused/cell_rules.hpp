#pragma once
// The public fused-cell interface: a cell's hand-written point-wise rules for one time step, run
// by the library's one sequence driver. The built-in cells (cells.hpp) use it exactly as a
// user's cell does.
//
// A cell describes its layout and hands the driver its weights; the driver owns everything else:
//   - the input projection of all steps as one GEMM: gates = x W_ih^T + b_ih      [T, B, G*H]
//   - the stage-1 recurrent product h W_hh^T (+ b_hh), W_hh packed once per sequence [B, R*H];
//     either added to gate blocks 0..R-1 (LSTM, RNN, MGU's forget gate) or handed to the rule
//     in its own buffer with b_hh beside it (GRU: r ⊙ (W_hn h + b_hn))
//   - for two-stage cells a second, dependent product q W_2^T where q is a gated state the
//     stage-1 rule writes (MGU: q = f ⊙ h), handed to forward_second()
//   - optionally an output projection (layout.projection): the rule's output m [B, H] becomes
//     h' = m W_proj^T [B, P] by one GEMM per step, as an LSTM with PyTorch's proj_size (see below)
//   - lengths with packed semantics (finished rows keep their state, output zeros; the rules
//     only ever see running rows), the reverse direction, the saved buffers, the backward GEMMs
//     for dx, dW_ih, dW_hh, dW_2, dW_proj and dh, bias sums, float and double, one tape op per
//     sequence.
// Stacking, directions, initial states, dropout and truncated BPTT come from the layer as usual.
//
// Rules see one row of the batch at a time through raw pointers of length H (or G*H, R*H):
//   forward(row):  reads the gate pre-activations, states before the step (and the stage-1
//                  product when separate), writes the next states and anything the backward
//                  needs: it may overwrite `gates` (e.g. with activations) and fill `saved`.
//   backward(row): reads what forward kept; grad_state[s] holds dL/d(state s after the step)
//                  (the output's gradient already added to h) and is replaced by the direct part of
//                  dL/d(state s before the step); the driver adds dR W_hh (and dR_2 W_2's part
//                  through q) itself. Writes grad_gates = dL/d(gate pre-activation) for all G
//                  blocks, grad_recurrent when the product is separate, and adds to grad_units.
// Two-stage cells: forward() runs after stage 1 and must write gated_state; forward_second()
// after stage 2. In backward, backward_second() runs first (it must not change grad_state; it
// writes grad_second = dL/d(stage-2 product) and its gate blocks of grad_gates), the driver
// computes grad_gated_state = grad_second W_2, then backward() runs.
//
// Output projection (layout.projection, weights.projection_weight [P, H]): h, state 0, has
// width P (the layer's output, the next step's and the next layer's input), the other states
// keep H, and W_hh is [R*H, P]. The rule computes the cell's output m [H] as it would compute h'
// without projection: next_state[0] points at m, which the driver keeps for the backward and
// turns into h' = m W_proj^T once all rows of the step are done. h reaches the step only through
// the stage-1 product, so the rule is given no h (state[0] is null) and its direct part of
// dL/dh is zero: in backward, grad_state[0] holds dL/dm = dL/dh' W_proj (computed by the
// driver) and what the rule leaves there is not read. The driver adds dW_proj = sum dh'^T m.
// A projection has no second stage (q would gate an h of another width).
//
// A rule may also reduce over its row (a sum, a mean, a norm over the H or G*H elements it is
// given): rows are independent, so a row's rule sees all of the row and nothing else. Layer
// normalisation inside a rule (examples/ln_lstm_cell.hpp) keeps what its backward needs in `saved`
// buffers and uses row_norm.hpp.
//
// Rules are written with xsimd batches through lanes.hpp, templated on the cell's T.
// They are used only when the cell's dynamic type is exactly rules_cell_type(): a subclass that
// changes step() never inherits hand-written rules that no longer match it (the layer then runs
// step() and says why, see Recurrent::path_note()). A cell that derives from nn::FusedCell
// (cell.hpp) gets fused_rules() and rules_cell_type() from it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include <rewind/autograd/tensor.hpp>

namespace rw::nn {
template <class T>
struct SequenceResult;  // cell.hpp
}

namespace rw::nn::fused {

struct CellLayout {
    std::size_t gates = 1;              // G: blocks of width H in the input projection
    std::size_t states = 1;             // state tensors, h first, each [B, H]
    std::size_t recurrent = 0;          // R: blocks of h W_hh^T (0: no recurrent GEMM, e.g. IndRNN)
    bool recurrent_into_gates = true;   // the product adds to gate blocks 0..R-1; else its own buffer
    std::size_t second = 0;             // R_2: blocks of the second-stage product q W_2^T (0: one stage)
    std::size_t saved = 0;              // extra [B, H] buffers per step that forward keeps for backward
    std::size_t units = 0;              // per-unit recurrent vectors [H] (IndRNN's u, peepholes)
    bool projection = false;            // h' = m W_proj^T, h of width P (above)
};

// The GEMM flops of one forward step over a batch (backward is about twice that); `output` is
// h's width P with a projection (0: no projection, h has width `hidden`).
double forward_flops_per_step(const CellLayout& layout, std::size_t batch, std::size_t input, std::size_t hidden,
                              std::size_t output = 0);

// The tensors the driver reads, named by their role in the step; shapes follow the layout.
// Undefined tensors are absent. Every member has a default, so designated initialisers that name
// only some of them compile quietly under -Wextra (-Wmissing-field-initializers).
template <class T>
struct CellWeights {
    Tensor<T> input_weight = {};         // W_ih [G*H, I]: the input projection of every gate block
    Tensor<T> input_bias = {};           // [G*H] or undefined, added with the input projection
    Tensor<T> recurrent_weight = {};     // W_hh [R*H, H] when R > 0 ([R*H, P] with a projection): h W_hh^T
    Tensor<T> recurrent_bias = {};       // [R*H] or undefined, added with the recurrent product
    Tensor<T> gated_state_weight = {};   // W_2 [R_2*H, H] when R_2 > 0: two-stage cells' q W_2^T
    std::vector<Tensor<T>> units = {};   // layout.units tensors, each [H]
    Tensor<T> projection_weight = {};    // W_proj [P, H] when layout.projection: h' = m W_proj^T
};

// One row of the batch at one step, forward. Pointers of length H unless said otherwise;
// gate(k) is gate block k of `gates` (k < G), recurrent_gate(k) block k of the separate product.
template <class T>
struct ForwardRow {
    std::size_t hidden = 0;
    std::size_t output = 0;               // h's width: P with a projection, else H
    T* gates = nullptr;                   // [G*H]: pre-activations in (stage-1 product added when into gates)
    const T* recurrent = nullptr;         // [R*H] stage-1 product when separate (without b_hh)
    const T* bias_hh = nullptr;           // [R*H] when separate and the cell has b_hh
    const T* const* state = nullptr;      // [states] before the step (state[0] null with a projection)
    T* const* next_state = nullptr;       // [states] after the step (next_state[0]: m with a projection)
    T* const* saved = nullptr;            // [layout.saved]
    const T* const* units = nullptr;      // [layout.units]
    T* gated_state = nullptr;             // two-stage: q, written by forward()
    const T* second = nullptr;            // two-stage: [R_2*H] q W_2^T, read by forward_second()

    T* gate(std::size_t k) const { return gates + k * hidden; }
    const T* recurrent_gate(std::size_t k) const { return recurrent + k * hidden; }
};

// grad_gate(k) is block k of grad_gates, grad_recurrent_gate(k) of grad_recurrent.
template <class T>
struct BackwardRow {
    std::size_t hidden = 0;
    std::size_t output = 0;               // h's width: P with a projection, else H
    const T* gates = nullptr;             // [G*H] as forward left them
    const T* const* state = nullptr;      // before the step (as in ForwardRow)
    const T* const* next_state = nullptr; // after the step (next_state[0]: m with a projection)
    const T* const* saved = nullptr;
    const T* const* units = nullptr;
    const T* gated_state = nullptr;       // two-stage
    T* const* grad_state = nullptr;       // in: dL/d(after); out: direct part of dL/d(before) (projection: above)
    T* grad_gates = nullptr;              // [G*H] out
    T* grad_recurrent = nullptr;          // [R*H] out, when the product is separate
    T* grad_second = nullptr;             // [R_2*H] out of backward_second()
    const T* grad_gated_state = nullptr;  // two-stage, in to backward(): grad_second W_2
    T* const* grad_units = nullptr;       // [layout.units], accumulate (+=)

    const T* gate(std::size_t k) const { return gates + k * hidden; }
    T* grad_gate(std::size_t k) const { return grad_gates + k * hidden; }
    T* grad_recurrent_gate(std::size_t k) const { return grad_recurrent + k * hidden; }
};

// Optional tangent rules (forward mode and second order on the fast path; Note [Tangent sweeps],
// nn/src/fused/tangent.cpp). A cell never has to write them: without them the layer replays the
// cell's generic step() for forward mode and double backward. With them the driver runs tangent
// sweeps that keep the GEMMs fused (cells without units, second stage or projection).
//
// forward_tangent(row): the JVP of forward(). It runs right after forward() on the same row and
// sees what forward() left (the gate row, the next states, the saved buffers). In: tangent_gates
// holds the tangents of the gate pre-activations (stage-1 product added when into gates),
// tangent_recurrent / tangent_bias_hh those of the separate product and b_hh (null: zero),
// tangent_state those of the states before the step. Out: tangent_gates is overwritten with the
// tangent of the gate row as forward() left it, tangent_next_state and tangent_saved are the
// tangents of what forward() wrote there.
template <class T>
struct ForwardTangentRow : ForwardRow<T> {
    T* tangent_gates = nullptr;                   // [G*H] in: pre-activations'; out: the gate row's
    const T* tangent_recurrent = nullptr;         // [R*H] when separate
    const T* tangent_bias_hh = nullptr;           // [R*H] when separate and b_hh has a tangent, else null
    const T* const* tangent_state = nullptr;      // [states]
    T* const* tangent_next_state = nullptr;       // [states] out
    T* const* tangent_saved = nullptr;            // [layout.saved] out

    const T* tangent_gate(std::size_t k) const { return tangent_gates + k * this->hidden; }
    const T* tangent_recurrent_gate(std::size_t k) const { return tangent_recurrent + k * this->hidden; }
};

// backward_tangent(row): the JVP of backward() with respect to everything backward() reads: the
// kept buffers (their tangents from forward_tangent) and grad_state (its tangent in
// tangent_grad_state). It runs right BEFORE backward() on the same row, so grad_state still holds
// dL/d(state after the step); it must not write the primal outputs. Out: tangent_grad_gates
// (all G blocks), tangent_grad_recurrent when separate, and tangent_grad_state replaced by the
// tangent of the direct part of dL/d(state before), as backward() does for grad_state.
template <class T>
struct BackwardTangentRow : BackwardRow<T> {
    const T* tangent_gates = nullptr;             // [G*H] the gate row's, from forward_tangent
    const T* const* tangent_state = nullptr;      // before the step
    const T* const* tangent_next_state = nullptr; // after the step
    const T* const* tangent_saved = nullptr;
    T* const* tangent_grad_state = nullptr;       // in: of dL/d(after); out: of the direct part of dL/d(before)
    T* tangent_grad_gates = nullptr;              // [G*H] out
    T* tangent_grad_recurrent = nullptr;          // [R*H] out, when separate

    const T* tangent_gate(std::size_t k) const { return tangent_gates + k * this->hidden; }
    T* tangent_grad_gate(std::size_t k) const { return tangent_grad_gates + k * this->hidden; }
    T* tangent_grad_recurrent_gate(std::size_t k) const { return tangent_grad_recurrent + k * this->hidden; }
};

template <class T>
class CellRules {
public:
    virtual ~CellRules() = default;
    // The exact cell class these rules were written for (typeid(MyCell<T>)).
    virtual const std::type_info& rules_cell_type() const = 0;
    virtual CellLayout layout() const = 0;
    virtual CellWeights<T> weights() const = 0;
    virtual void forward(const ForwardRow<T>& row) const = 0;
    virtual void backward(const BackwardRow<T>& row) const = 0;
    // Two-stage cells only.
    virtual void forward_second(const ForwardRow<T>& row) const;
    virtual void backward_second(const BackwardRow<T>& row) const;
    // Optional tangent rules (ForwardTangentRow above): false unless the cell writes both.
    virtual bool has_tangent_rules() const { return false; }
    virtual void forward_tangent(const ForwardTangentRow<T>& row) const;
    virtual void backward_tangent(const BackwardTangentRow<T>& row) const;
    // Names of the G gate blocks in weight_ih's order, for reports (default "gate 0", ...).
    virtual std::vector<std::string> gate_names() const;
    // GEMM flops of one forward step; the default counts the layout's products.
    virtual double forward_flops(std::size_t batch, std::size_t input, std::size_t hidden) const {
        const Tensor<T> projection = layout().projection ? weights().projection_weight : Tensor<T>();
        return forward_flops_per_step(layout(), batch, input, hidden, projection.defined() ? projection.size(0) : 0);
    }
};

// The layer-direction recomputed with the cell's generic ops: (x, initial states...) to (output,
// final states...), reading the cell's parameters itself (the weights() tensors). The fused op's
// rules beyond first order differentiate it: double backward (create_graph) and forward mode
// (tangents). A Recurrent layer supplies it; a direct run_sequence call may.
template <class T>
using SequenceReplay = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>& inputs)>;

// Runs one layer-direction over the whole sequence as one tape op with the cell's rules.
// input [T, B, I]; initial_state one [B, H] per state ([B, P] for h with a projection);
// lengths empty or one per row in 1..T.
// recompute_segment k (0 < k < T): recomputation, the op keeps the states only before every k-th
// step and one window of k steps, and its backward reruns each segment's forward (about one more
// forward pass); the gradients equal the full-memory run's up to the summation order of the
// weight gradients over segments. 0 (or k >= T): every step is kept.
// The op shares ownership of `rules` with the graph: they live until its backward has run and the
// graph is dropped. Rules held in a cell are passed with the cell as their owner through the
// aliasing constructor, std::shared_ptr<const CellRules<T>>(cell, &cell->rules), which keeps the
// whole cell alive. Null rules: std::invalid_argument.
// `replay` (above) gives the op second order and forward mode; without one, backward with
// create_graph and tangents on the op's inputs throw GraphError saying so.
template <class T>
SequenceResult<T> run_sequence(std::shared_ptr<const CellRules<T>> rules, const Tensor<T>& input,
                               const std::vector<Tensor<T>>& initial_state,
                               const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name,
                               std::size_t recompute_segment = 0, SequenceReplay<T> replay = {});

// How many row groups the driver splits a batch of `batch` rows into, one per thread: up to
// blas::num_threads(), with at least 4 rows each (rows are independent until the weight
// gradients sum over them). Rules are then called concurrently for different rows, so they
// must not write anything but the row's own buffers (grad_units are per thread, summed after).
std::size_t row_groups(std::size_t batch);

// The bytes the driver's buffers (saved steps, windows, checkpoints, backward scratch) hold now
// and at most since the last reset, over all threads: measured, for benchmarks and tests.
struct DriverMemory {
    std::size_t live = 0, peak = 0;
};
DriverMemory driver_memory();
void reset_driver_memory_peak();

// What the op keeps alive for its backward per time step besides its inputs and outputs;
// `output` is h's width P with a projection (0: none).
std::size_t saved_bytes_per_step(const CellLayout& layout, std::size_t batch, std::size_t hidden,
                                 std::size_t element_size, bool with_lengths = false, std::size_t output = 0);

}  // namespace rw::nn::fused
