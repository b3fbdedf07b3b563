// The element-wise ops custom cells reach for beyond the basic ones (ops_elementwise.cpp):
// rsqrt, abs, maximum/minimum, where, softplus, log_sigmoid, with PyTorch's semantics. Each
// backward sits below its forward, written with differentiable ops so gradients of gradients work.

#include <cmath>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>
#include <xtensor/xbroadcast.hpp>

#include "rewind/autograd/broadcast.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"
#include "forward_rules.hpp"

namespace rw {

namespace {

template <class T, class F>
xt::xarray<T> map_values(const xt::xarray<T>& x, F f) {
    xt::xarray<T> out = xt::xarray<T>::from_shape(x.shape());
    const T* px = x.data();
    T* po = out.data();
    for (std::size_t i = 0, n = out.size(); i < n; ++i) po[i] = f(px[i]);
    return out;
}

// `x` broadcast to `shape` and evaluated, so that binary ops below are plain loops.
template <class T>
xt::xarray<T> expanded(const xt::xarray<T>& x, const Shape& shape) {
    if (to_shape(x.shape()) == shape) return x;
    return xt::xarray<T>(xt::broadcast(x, shape));
}

template <class T>
Tensor<T> reduced_to(const Tensor<T>& g, const Tensor<T>& x) {
    return g.value().shape() == x.value().shape() ? g : sum_to(g, x.shape());
}

// The rules of an op y = M_a a + M_b b with constant masks at the output's shape (maximum,
// minimum, where): the backward masks g and sums it down to each input; the forward masks each
// input's tangent broadcast to the output (the transpose of the same linear map).
template <class T>
BackwardRule<T> masked_backward(xt::xarray<T> mask_a, xt::xarray<T> mask_b) {
    return [mask_a = std::move(mask_a), mask_b = std::move(mask_b)](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        return {ctx.needs_input_grad(0) ? reduced_to(mul_mask(g, mask_a), ctx.input(0)) : Tensor<T>(),
                ctx.needs_input_grad(1) ? reduced_to(mul_mask(g, mask_b), ctx.input(1)) : Tensor<T>()};
    };
}

template <class T>
ForwardRule<T> masked_forward(xt::xarray<T> mask_a, xt::xarray<T> mask_b) {
    return [mask_a = std::move(mask_a), mask_b = std::move(mask_b)](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        const Shape shape = ctx.output(0).shape();
        return {detail::sum_of_tangents(ctx, shape, [&](const Tensor<T>& t, std::size_t i) {
            return mul_mask(detail::expanded_tangent(t, shape), i == 0 ? mask_a : mask_b);
        })};
    };
}

// maximum (larger = true) and minimum: PyTorch's rule, where(a == b, g / 2, g) masked to 0
// where the other input wins, for each input; NaN compares false everywhere, so it passes g.
template <class T>
Tensor<T> extremum(const Tensor<T>& a, const Tensor<T>& b, bool larger) {
    const char* name = larger ? "maximum" : "minimum";
    const Shape shape = broadcast_shapes(name, a.shape(), b.shape());
    const xt::xarray<T> x = expanded(a.value(), shape), y = expanded(b.value(), shape);
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape), mask_a = value, mask_b = value;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const T u = x.data()[i], v = y.data()[i];
        const bool nan = std::isnan(u) || std::isnan(v);
        value.data()[i] = nan ? std::numeric_limits<T>::quiet_NaN() : (larger ? std::max(u, v) : std::min(u, v));
        const bool a_loses = larger ? u < v : u > v, b_loses = larger ? u > v : u < v;
        mask_a.data()[i] = u == v ? T(0.5) : T(!a_loses);
        mask_b.data()[i] = u == v ? T(0.5) : T(!b_loses);
    }
    BackwardRule<T> backward = masked_backward<T>(mask_a, mask_b);  // copies, before the forward rule takes them
    return record_op<T>(name, {a, b}, std::move(value), std::move(backward),
                        masked_forward<T>(std::move(mask_a), std::move(mask_b)));
}

}  // namespace

template <class T>
Tensor<T> rsqrt(const Tensor<T>& x) {
    return record_op<T>("rsqrt", {x}, map_values(x.value(), [](T v) { return T(1) / std::sqrt(v); }),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            const Tensor<T> y = ctx.output(0);
                            return {mul(mul_scalar(ctx.grad_output(0), T(-0.5)), mul(y, mul(y, y)))};
                        },
                        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            const Tensor<T> y = ctx.output(0);
                            return {mul(mul_scalar(ctx.tangent(0), T(-0.5)), mul(y, mul(y, y)))};
                        });
}

template <class T>
Tensor<T> abs(const Tensor<T>& x) {
    return record_op<T>("abs", {x}, map_values(x.value(), [](T v) { return std::abs(v); }),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            const auto sign = map_values(ctx.input(0).value(), [](T v) { return T((v > 0) - (v < 0)); });
                            return {mul_mask(ctx.grad_output(0), sign)};
                        },
                        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            const auto sign = map_values(ctx.input(0).value(), [](T v) { return T((v > 0) - (v < 0)); });
                            return {mul_mask(ctx.tangent(0), sign)};
                        });
}

template <class T>
Tensor<T> maximum(const Tensor<T>& a, const Tensor<T>& b) {
    return extremum(a, b, true);
}

template <class T>
Tensor<T> minimum(const Tensor<T>& a, const Tensor<T>& b) {
    return extremum(a, b, false);
}

template <class T>
Tensor<T> where(const xt::xarray<bool>& condition, const Tensor<T>& a, const Tensor<T>& b) {
    const Shape shape = broadcast_shapes("where", broadcast_shapes("where", to_shape(condition.shape()), a.shape()), b.shape());
    const xt::xarray<bool> pick = xt::broadcast(condition, shape);
    const xt::xarray<T> x = expanded(a.value(), shape), y = expanded(b.value(), shape);
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape), mask_a = value, mask_b = value;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const bool p = pick.data()[i];
        value.data()[i] = p ? x.data()[i] : y.data()[i];
        mask_a.data()[i] = T(p);
        mask_b.data()[i] = T(!p);
    }
    BackwardRule<T> backward = masked_backward<T>(mask_a, mask_b);  // copies, before the forward rule takes them
    return record_op<T>("where", {a, b}, std::move(value), std::move(backward),
                        masked_forward<T>(std::move(mask_a), std::move(mask_b)));
}

template <class T>
Tensor<T> softplus(const Tensor<T>& x, Scalar<T> beta, Scalar<T> threshold) {
    if (!(beta != T(0))) throw std::invalid_argument(fmt::format("softplus: beta must be nonzero, got {}", beta));
    auto value = map_values(x.value(), [beta, threshold](T v) {
        return v * beta > threshold ? v : std::log1p(std::exp(v * beta)) / beta;
    });
    return record_op<T>("softplus", {x}, std::move(value), [beta, threshold](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        const auto& v = ctx.input(0);
        // Past the threshold the forward is x itself, so the gradient is g exactly (as PyTorch).
        const xt::xarray<bool> linear = v.value() * beta > threshold;
        return {rw::where(linear, g, mul(g, sigmoid(mul_scalar(v, beta))))};
    }, [beta, threshold](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        const auto& v = ctx.input(0);
        const Tensor<T> t = ctx.tangent(0);
        const xt::xarray<bool> linear = v.value() * beta > threshold;
        return {rw::where(linear, t, mul(t, sigmoid(mul_scalar(v, beta))))};
    });
}

template <class T>
Tensor<T> log_sigmoid(const Tensor<T>& x) {
    auto value = map_values(x.value(), [](T v) { return std::min(v, T(0)) - std::log1p(std::exp(-std::abs(v))); });
    return record_op<T>("log_sigmoid", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {mul(ctx.grad_output(0), sigmoid(neg(ctx.input(0))))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {mul(ctx.tangent(0), sigmoid(neg(ctx.input(0))))}; });
}

#define REWIND_NONLINEAR_OPS(T)                                                          \
    template Tensor<T> rsqrt(const Tensor<T>&);                                          \
    template Tensor<T> abs(const Tensor<T>&);                                            \
    template Tensor<T> maximum(const Tensor<T>&, const Tensor<T>&);                      \
    template Tensor<T> minimum(const Tensor<T>&, const Tensor<T>&);                      \
    template Tensor<T> where(const xt::xarray<bool>&, const Tensor<T>&, const Tensor<T>&); \
    template Tensor<T> softplus(const Tensor<T>&, T, T);                                 \
    template Tensor<T> log_sigmoid(const Tensor<T>&);
REWIND_NONLINEAR_OPS(float)
REWIND_NONLINEAR_OPS(double)

}  // namespace rw
