#pragma once
// Private to the fused driver: the fused sequence op's derivatives beyond first order, taken
// from the layer's replay of the layer-direction with the cell's generic ops (SequenceReplay,
// cell_rules.hpp).
//
// Note [Second order through the fused op]: the fused op F maps θ = (x, weights, units, initial
// states) to (output, final states). Its first-order rule is the hand-written fused backward
// B(θ, dy) = ∇φ with φ(θ) = <dy, F(θ)>. Under create_graph the op's backward still computes B's
// values with the fused backward, and records them as the outputs of one more op,
// `<name>_backward`, whose inputs are θ and dy. That op's backward (the second-order rule) is
// given cotangents v of B and needs
//     v ∂B/∂θ = ∇²φ v   and   v ∂B/∂dy = J v   (B is linear in dy: B = Jᵀ dy),
// one Hessian-vector product and one forward tangent. `directional` is the one function that
// computes both, here by differentiating the replay twice on a private graph; a cell with fast
// tangent sweeps can answer the same question without the replay, and nothing else changes.
// Forward mode uses the same function: the op's JVP is J v, and the tangents of its gradients
// (forward-over-reverse, rw::hvp) are ∇²φ v + Jᵀ u for tangents v of θ and u of dy.
// Third order (create_graph through the second-order rule) and tangents through the
// second-order rule are refused.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <rewind/autograd/function.hpp>

#include "driver.hpp"
#include "probe.hpp"

namespace rw::nn::fused::replay {

// The seam. Along a direction v of the inputs (one per input of F, undefined: zero) and u of
// the grad outputs (one per output, undefined: zero), at grad outputs dy (undefined: zero):
//   jvp[o]:       J v, the outputs' tangent (computed when want_jvp);
//   gradients[i]: ∇²φ v + Jᵀ u, the tangent of B = ∇<dy, F> (computed where want_gradients[i]).
// With u = 0 these are the second-order rule's two results; with v and u the tangents of the
// inputs and grad outputs, the tangent of the fused backward's gradients (forward-over-reverse).
// Computed by the op's sweeps when it has them, else by differentiating the replay twice on a
// private graph (reverse-over-reverse, so it needs no op's forward rule).
template <class T>
struct Directional {
    std::vector<Tensor<T>> jvp;        // per output
    std::vector<Tensor<T>> gradients;  // per input
};

// What the rules beyond first order know of one fused op.
template <class T>
struct ReplayOp {
    std::string op;                     // the fused op's name, e.g. "fused_lstm_reverse"
    SequenceReplay<T> replay;           // empty: run_sequence was called without one
    driver::InputIndex index;
    std::size_t inputs = 0, outputs = 0;
    // The fast alternative to the replay, for a cell whose rules offer tangent rules: the driver's
    // tangent sweeps over the op's saved buffers, given `directional`'s arguments (inputs, grad
    // outputs, v, u, want_jvp, want_gradients), filling its result and returning true, or
    // returning false (touching nothing) where they do not apply; then the replay runs.
    std::function<bool(const std::vector<Tensor<T>>&, const std::vector<Tensor<T>>&, const std::vector<Tensor<T>>&,
                       const std::vector<Tensor<T>>&, bool, const std::vector<bool>&, Directional<T>&)>
        sweeps;

    // x and the initial states: the replay takes them as arguments; every other input is a
    // tensor of the cell's that the replay reads itself.
    bool replayed(std::size_t i) const { return int(i) == index.x || int(i) >= index.states; }
    // "weight_hh", "unit 2", "initial state 1", ... for error messages.
    std::string input_name(std::size_t i) const;
};

template <class T>
Directional<T> directional(const ReplayOp<T>& op, const std::vector<Tensor<T>>& inputs,
                           const std::vector<Tensor<T>>& grad_outputs, const std::vector<Tensor<T>>& v,
                           const std::vector<Tensor<T>>& u, bool want_jvp, const std::vector<bool>& want_gradients);

// Whether a backward of the op must go beyond the fused backward: create_graph, or tangents on
// its inputs or grad outputs in forward mode.
template <class T>
bool beyond_first_order(const BackwardContext<T>& ctx);

// The fused backward's gradient values made differentiable: recorded as the outputs of
// `<op>_backward` (under create_graph), whose backward is the second-order rule, and given
// tangents by its forward rule (forward-over-reverse). Throws GraphError when the op has no
// replay or reads a weight that is not a leaf.
template <class T>
Gradients<T> record_backward(const std::shared_ptr<const ReplayOp<T>>& op, const BackwardContext<T>& ctx,
                             Gradients<T> values);

// The op's forward-mode (JVP) rule: J v through `directional`.
template <class T>
ForwardRule<T> forward_rule(const std::shared_ptr<const ReplayOp<T>>& op);

}  // namespace rw::nn::fused::replay
