#pragma once
// Checking a cell's hand-written fused rules against the tape's derivative of the same cell's
// generic step(), step by step, in float64 (the BPTT-verification workflow).
//
// check_fused_cell runs, for each direction, the fused driver with the cell's rules and, beside
// it, the cell's own prepare_input() and step() one step at a time on the tape, on the same random
// data (random lengths with one full row, given random initial states, a random weighting of
// every output and final state as the loss). It compares per time step
//   forward:  each state after the step;
//   backward: dL/d(each gate block's pre-activation) and dL/d(each state before the step);
// and at the end the gradient of every parameter, of x and of the initial states.
// The first divergence is found by walking forward through the forward pass, then backward from
// the last step through the backward pass, in the order the steps ran; it names the direction,
// the time step and the tensor. Gate blocks are compared when prepare_input()'s width is G*H
// (the cell's prepare_input() is the input projection, as for every built-in cell). A cell with an
// output projection (an LSTM with proj_size) is checked the same way: h at its own width P, and
// the projection's weight among the parameters' gradients.
// A cell with optional tangent rules (CellRules::has_tangent_rules) has them checked too, per
// direction and whole-sequence: the fast tangent sweeps' J v and ∇²<dy, F> v + Jᵀ u (random v, u;
// dy the loss's weights) against the tape's derivatives of step() taken twice; where the sweeps do
// not cover the cell's configuration (a projection, say) tangents_note says so.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "rewind/nn/layers/cell.hpp"

namespace rw::nn {

struct FusedCheckOptions {
    std::size_t steps = 5;
    std::size_t batch = 3;
    bool with_lengths = true;     // random lengths in 1..T, one row full
    bool both_directions = true;  // also the reverse direction
    std::uint64_t seed = 1;
    // A difference counts when above tolerance * max(1, largest |tape value| of that tensor).
    double tolerance = 1e-9;
};

struct TensorDifference {
    std::string tensor;  // "h", "c", "gate forget", "weight_ih", "x", "h0", ...
    double difference = 0;  // largest |fused - tape|
    double scale = 0;       // largest |tape|
};

struct StepDifferences {
    std::size_t step = 0;
    std::vector<TensorDifference> forward;   // each state after the step
    std::vector<TensorDifference> backward;  // each gate block, then each state before the step
};

struct FusedDirectionReport {
    bool reverse = false;
    std::vector<StepDifferences> steps;       // in time order
    std::vector<TensorDifference> gradients;  // parameters, x, initial states
    std::vector<TensorDifference> tangents;   // the tangent rules: J v per output, Hv + Jᵀu per input
};

struct FusedCheckReport {
    double tolerance = 0;
    std::vector<FusedDirectionReport> directions;
    bool passed = true;
    // The first divergence, when !passed.
    std::string pass;             // "forward", "backward", "gradients" or "tangents"
    bool reverse = false;         // in which direction
    std::size_t step = 0;         // time step (forward/backward)
    std::string tensor;
    double difference = 0, scale = 0;
    std::string gates_note;       // why gate blocks were not compared, if they were not
    std::string tangents_note;    // why the cell's tangent rules were not checked, if it has them
    // A summary: the verdict, then per direction the worst per tensor and the first divergence.
    std::string to_string(bool per_step = false) const;
};

// The cell must have usable fused rules (usable_fused_rules()); std::invalid_argument otherwise.
// Parameter gradients of the cell are left zeroed.
FusedCheckReport check_fused_cell(const RecurrentCell<double>& cell, const FusedCheckOptions& options = {});
// The same in one call from a cell factory (what a Recurrent takes): the cell is made with
// `input_size`, `hidden_size` and a generator seeded with options.seed. E.g.
//   std::cout << rw::nn::check_fused_cell(my_factory, 3, 4).to_string();
FusedCheckReport check_fused_cell(const CellFactory<double>& factory, std::size_t input_size, std::size_t hidden_size,
                                  const FusedCheckOptions& options = {});

}  // namespace rw::nn
