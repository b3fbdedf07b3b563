#pragma once
// Private to the fused driver: the tangent sweeps over a fused op's saved forward (Note [Tangent
// sweeps], tangent.cpp), for the op's forward-mode rule and for the tangents of its backward
// (forward-over-reverse HVP, double backward). The seam in sequence.cpp calls
//   tangent_sweep_refusal(saved)   "" when the sweeps apply, else why not (then replay the cell);
//   tangent_forward(...)           the JVP of the op's outputs, keeping every step's tangents;
//   tangent_backward(...)          the op's gradients and their tangents.
// Op inputs and their tangents are passed by the op's input positions (saved.index); a null
// pointer (or a position past the end) is an absent input or a zero tangent.

#include <string>
#include <vector>

#include <rewind/autograd/tensor.hpp>

#include "tangent_run.hpp"
#include "window.hpp"

namespace rw::nn::fused::driver {

// Why the sweeps cannot run over this op (the cell has no tangent rules, or per-unit vectors, a
// second stage, a projection, recomputation or an inference forward), or "" when they can.
template <class T>
std::string tangent_sweep_refusal(const Saved<T>& saved);

// Every step's tangents of what the forward kept (for tangent_backward), and the outputs' tangents.
template <class T>
struct ForwardTangents {
    Buffer<T> gates;                 // [T, B, G*H]: of the gate rows as the forward rule left them
    std::vector<Buffer<T>> states;   // per state [T, B, width]: of the states before step t
    std::vector<Buffer<T>> finals;   // per state [B, width]: after the last processed step
    std::vector<Buffer<T>> extra;    // per saved buffer [T, B, H]
    Tensor<T> output;                // [T, B, P]: the op's output's tangent (zeros in finished rows)
    std::vector<Tensor<T>> final_state;
};

// values/tangents: per op input position.
template <class T>
ForwardTangents<T> tangent_forward(Saved<T>& saved, const std::vector<const T*>& values,
                                   const std::vector<const T*>& tangents);

// The op's gradients for the op's outputs' gradients `grad_outputs` (output, then final states;
// null: zero) and their tangents, in the direction (tangents, grad_output_tangents): per op input,
// undefined where `needed` is false; with_gradients false: the tangents only (the primal backward
// still runs step by step, its products over all steps are skipped).
template <class T>
struct TangentGradients {
    std::vector<Tensor<T>> gradient, tangent;
};

template <class T>
TangentGradients<T> tangent_backward(Saved<T>& saved, const std::vector<const T*>& values,
                                     const std::vector<const T*>& tangents, ForwardTangents<T>& forward,
                                     const std::vector<const T*>& grad_outputs,
                                     const std::vector<const T*>& grad_output_tangents,
                                     const std::vector<bool>& needed, bool with_gradients = true);

// The fused op's question beyond first order (replay.hpp's `directional`) answered by the sweeps:
// along tangents v of the op's inputs and u of its grad outputs, at grad outputs dy,
//   jvp[o] = J v (when want_jvp)   and   gradients[i] = ∇²<dy, F> v + Jᵀ u (where want_gradients[i]).
// False, touching nothing, when tangent_sweep_refusal(saved) is not empty.
template <class T>
bool tangent_directional(Saved<T>& saved, const std::vector<Tensor<T>>& inputs, const std::vector<Tensor<T>>& grad_outputs,
                         const std::vector<Tensor<T>>& v, const std::vector<Tensor<T>>& u, bool want_jvp,
                         const std::vector<bool>& want_gradients, std::vector<Tensor<T>>& jvp,
                         std::vector<Tensor<T>>& gradients);

}  // namespace rw::nn::fused::driver
