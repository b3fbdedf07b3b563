#pragma once
// Private to nn/ (tests and the benchmark include it from nn/src): one layer-direction's fused
// forward keeping every step, then the tangent sweeps over it (tangent.hpp), without the tape;
// and the switch and count of the sweeps behind the fused op's seam (replay.hpp).
// The op's inputs are in the fused op's order: x, W_ih, then b_ih, W_hh, b_hh where the cell has
// them, then the initial states (tangent_op_inputs lists them).

#include <cstdint>
#include <string>
#include <vector>

#include "rewind/nn/fused/cell_rules.hpp"

namespace rw::nn::fused::detail {

template <class T>
std::vector<Tensor<T>> tangent_op_inputs(const CellRules<T>& rules, const Tensor<T>& input,
                                         const std::vector<Tensor<T>>& initial_state);

template <class T>
struct TangentRun {
    std::string refusal;                      // why the sweeps do not apply ("" when they ran)
    std::vector<Tensor<T>> outputs;           // output, then final states
    std::vector<Tensor<T>> output_tangents;   // their JVP
    std::vector<Tensor<T>> gradients;         // per op input: the backward's for grad_outputs
    std::vector<Tensor<T>> gradient_tangents; // per op input: their tangents
};

// tangents: per op input (undefined: zero); grad_outputs and their tangents: output then final
// states (undefined: zero). with_backward false: the forward sweep only; needed: per op input
// whether its gradient (and tangent) is wanted (empty: all).
template <class T>
TangentRun<T> run_tangent_sweeps(const CellRules<T>& rules, const Tensor<T>& input,
                                 const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths,
                                 bool reverse, const std::vector<Tensor<T>>& tangents,
                                 const std::vector<Tensor<T>>& grad_outputs,
                                 const std::vector<Tensor<T>>& grad_output_tangents, bool with_backward = true,
                                 const std::vector<bool>& needed = {});

}  // namespace rw::nn::fused::detail

namespace rw::nn::fused::driver {

// Whether tangent_directional may answer (default true): false sends every cell to the replay,
// for comparing the two paths in tests and benchmarks.
void set_tangent_sweeps_enabled(bool enabled);
bool tangent_sweeps_enabled();

// How many times tangent_directional has answered (the fast sweeps ran), over all threads: tests
// assert which path ran with it.
std::size_t tangent_sweeps_run();
// How many forward tangent sweeps tangent_directional ran (Note [Forward sweep kept]).
std::size_t forward_sweeps_run();

}  // namespace rw::nn::fused::driver
