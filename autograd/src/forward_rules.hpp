#pragma once
// Helpers shared by the ops' forward-mode (JVP) rules (ops_*.cpp). Private to autograd/src.

#include "rewind/autograd/ops.hpp"

namespace rw::detail {

// The sum over the inputs that carry a tangent of term(tangent, input index), at the output's
// shape: the forward rule of an op linear in each input's tangent. Zero tangents cost nothing
// (undefined when no input carries one, which the caller returns as a zero tangent).
template <class T, class Term>
Tensor<T> sum_of_tangents(const ForwardContext<T>& ctx, const Shape& shape, Term term) {
    Tensor<T> total;
    for (std::size_t i = 0; i < ctx.num_inputs(); ++i) {
        if (!ctx.has_tangent(i)) continue;
        Tensor<T> part = term(ctx.tangent(i), i);
        if (!part.defined()) continue;
        if (part.shape() != shape) part = broadcast_to(part, shape);
        total = total.defined() ? add(total, part) : part;
    }
    return total;
}

// A tangent broadcast to `shape` (an input of a broadcasting op seen at the output's shape).
template <class T>
Tensor<T> expanded_tangent(const Tensor<T>& tangent, const Shape& shape) {
    return tangent.shape() == shape ? tangent : broadcast_to(tangent, shape);
}

}  // namespace rw::detail
