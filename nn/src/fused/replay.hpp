#pragma once
// Private to the fused driver: the fused sequence op's derivatives beyond first order, taken
// from the layer's replay of the layer-direction with the cell's generic ops (probe.hpp).
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
// Third order (create_graph through the second-order rule) is refused.

#include <memory>
#include <string>
#include <vector>

#include <rewind/autograd/function.hpp>

#include "driver.hpp"
#include "probe.hpp"

namespace rw::nn::fused::replay {

// What the rules beyond first order know of one fused op.
template <class T>
struct ReplayOp {
    std::string op;                     // the fused op's name, e.g. "fused_lstm_reverse"
    detail::SequenceReplay<T> replay;   // empty when run_sequence was called directly
    driver::InputIndex index;
    std::size_t inputs = 0, outputs = 0;

    // x and the initial states: the replay takes them as arguments; every other input is a
    // tensor of the cell's that the replay reads itself.
    bool replayed(std::size_t i) const { return int(i) == index.x || int(i) >= index.states; }
    // "weight_hh", "unit 2", "initial state 1", ... for error messages.
    std::string input_name(std::size_t i) const;
};

// J v per output of F and ∇²φ v per input (Note above). v has one entry per input of F
// (undefined: zero); dy one per output (undefined: zero). Only the Hessian rows in `want_hvp`
// and, with want_jvp, the tangents are computed; the rest are undefined (zero).
template <class T>
struct Directional {
    std::vector<Tensor<T>> jvp;  // per output
    std::vector<Tensor<T>> hvp;  // per input
};

template <class T>
Directional<T> directional(const ReplayOp<T>& op, const std::vector<Tensor<T>>& inputs,
                           const std::vector<Tensor<T>>& grad_outputs, const std::vector<Tensor<T>>& v, bool want_jvp,
                           const std::vector<bool>& want_hvp);

// The fused backward's gradient values made differentiable (create_graph): recorded as the
// outputs of `<op>_backward`, whose backward is the second-order rule. Throws GraphError when the
// op has no replay or reads a weight that is not a leaf.
template <class T>
Gradients<T> record_backward(const std::shared_ptr<const ReplayOp<T>>& op, const BackwardContext<T>& ctx,
                             Gradients<T> values);

}  // namespace rw::nn::fused::replay
