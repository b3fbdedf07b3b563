#pragma once
// Forward mode and the derivative products built on both modes.
//
// A tensor may carry a tangent (Tensor::tangent()): the derivative of its value along one
// direction of the inputs. Every op given a tangent on an input computes its outputs' tangents
// with its forward rule (record_op's ForwardRule, beside its backward rule), so tangents flow
// through a computation as values do: one pass gives J v, the Jacobian-vector product.
// Tangents are one level deep (Note [One forward level], function.cpp): they are plain tensors,
// never differentiated themselves. Hessian-vector products go forward-over-reverse: backward
// rules are ops too, so a backward run on tensors that carry tangents yields gradients that carry
// tangents, d(grad)/dv = H v.

#include <functional>
#include <type_traits>
#include <vector>

#include "function.hpp"
#include "tensor.hpp"

namespace rw {

template <class T>
using TensorFunction = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>&)>;
template <class T>
using LossFunction = std::function<Tensor<T>(const std::vector<Tensor<T>>&)>;

// `primal` as a new tensor carrying `tangent` (shape-checked); on the tape it is the identity.
template <class T>
Tensor<T> make_dual(const Tensor<T>& primal, const Tensor<T>& tangent);

template <class T>
struct JvpResult {
    std::vector<Tensor<T>> outputs;   // f(primals), without tangents
    std::vector<Tensor<T>> tangents;  // J v, one per output (zeros where an output does not depend on v)
};

// f's outputs and their directional derivatives along `tangents` (one per primal; an undefined
// tangent is a zero one), in one forward pass.
template <class T>
JvpResult<T> jvp(const TensorFunction<T>& f, const std::vector<Tensor<T>>& primals,
                 const std::vector<Tensor<T>>& tangents);

template <class T>
struct VjpResult {
    std::vector<Tensor<T>> outputs;    // f(primals)
    std::vector<Tensor<T>> gradients;  // J^T u, one per primal (zeros where f does not depend on it)
};

// f's outputs and the vector-Jacobian product with `cotangents` (one per output), by reverse mode.
template <class T>
VjpResult<T> vjp(const TensorFunction<T>& f, const std::vector<Tensor<T>>& primals,
                 const std::vector<Tensor<T>>& cotangents);

template <class T>
struct HvpResult {
    Tensor<T> value;                 // the loss
    std::vector<Tensor<T>> gradient; // its gradient, one per primal
    std::vector<Tensor<T>> product;  // H v, one per primal
};

// The Hessian of a one-element loss times `vectors` (one per primal), forward-over-reverse: the
// primals carry `vectors` as tangents through f and through the backward.
template <class T>
HvpResult<T> hvp(const LossFunction<T>& f, const std::vector<Tensor<T>>& primals, const std::vector<Tensor<T>>& vectors);

// The same for a loss that reads leaf tensors itself, a model's parameters: `vectors` are set as
// their tangents for the call and cleared after it (also when it throws).
template <class T>
HvpResult<T> hvp_leaves(const std::function<Tensor<T>()>& loss, const std::vector<Tensor<T>>& leaves,
                        const std::vector<Tensor<T>>& vectors);

// Tangents of another dtype are refused where the call is compiled.
template <class T, class U, class = std::enable_if_t<!std::is_same_v<T, U>>>
JvpResult<T> jvp(const TensorFunction<T>&, const std::vector<Tensor<T>>&, const std::vector<Tensor<U>>&) {
    static_assert(std::is_same_v<T, U>, "rw::jvp: the tangents must have the primals' dtype");
    return {};
}

extern template Tensor<float> make_dual(const Tensor<float>&, const Tensor<float>&);
extern template Tensor<double> make_dual(const Tensor<double>&, const Tensor<double>&);
extern template JvpResult<float> jvp(const TensorFunction<float>&, const std::vector<Tensor<float>>&,
                                     const std::vector<Tensor<float>>&);
extern template JvpResult<double> jvp(const TensorFunction<double>&, const std::vector<Tensor<double>>&,
                                      const std::vector<Tensor<double>>&);
extern template VjpResult<float> vjp(const TensorFunction<float>&, const std::vector<Tensor<float>>&,
                                     const std::vector<Tensor<float>>&);
extern template VjpResult<double> vjp(const TensorFunction<double>&, const std::vector<Tensor<double>>&,
                                      const std::vector<Tensor<double>>&);
extern template HvpResult<float> hvp(const LossFunction<float>&, const std::vector<Tensor<float>>&,
                                     const std::vector<Tensor<float>>&);
extern template HvpResult<double> hvp(const LossFunction<double>&, const std::vector<Tensor<double>>&,
                                      const std::vector<Tensor<double>>&);
extern template HvpResult<float> hvp_leaves(const std::function<Tensor<float>()>&, const std::vector<Tensor<float>>&,
                                            const std::vector<Tensor<float>>&);
extern template HvpResult<double> hvp_leaves(const std::function<Tensor<double>()>&, const std::vector<Tensor<double>>&,
                                             const std::vector<Tensor<double>>&);

}  // namespace rw
