// Ops that move elements around or multiply matrices. Each backward sits below its forward.

#include <numeric>

#include <fmt/format.h>
#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "rewind/autograd/broadcast.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/gemm.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

namespace {

std::size_t element_count(const Shape& shape) {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
}

}  // namespace

// ---- broadcasting and its adjoint ----

template <class T>
Tensor<T> broadcast_to(const Tensor<T>& x, const Shape& shape) {
    if (x.shape() == shape) return x;
    if (broadcast_shapes("broadcast_to", x.shape(), shape) != shape)
        throw_shape_error("broadcast_to", "cannot broadcast to the target shape", x.shape(), shape);
    xt::xarray<T> value = xt::broadcast(x.value(), shape);
    return record_op<T>("broadcast_to", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {sum_to(ctx.grad_output(0), ctx.input(0).shape())};
    });
}

template <class T>
Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape) {
    const Shape from = x.shape();
    if (from == shape) return x;
    if (shape.size() > from.size() || broadcast_shapes("sum_to", from, shape) != from)
        throw_shape_error("sum_to", "the target shape does not broadcast to the source", from, shape);
    // Sum the leading extra axes and every axis where the target has extent 1.
    std::vector<std::size_t> axes;
    const std::size_t lead = from.size() - shape.size();
    for (std::size_t i = 0; i < from.size(); ++i)
        if (i < lead || (shape[i - lead] == 1 && from[i] != 1)) axes.push_back(i);
    xt::xarray<T> summed = xt::sum(x.value(), axes, xt::evaluation_strategy::immediate);
    summed.reshape(shape);
    return record_op<T>("sum_to", {x}, std::move(summed), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {broadcast_to(ctx.grad_output(0), ctx.input(0).shape())};
    });
}

// ---- matrix products ----

template <class T>
Tensor<T> gemm(const Tensor<T>& a, const Tensor<T>& b, bool transpose_a, bool transpose_b) {
    if (a.dim() != 2 || b.dim() != 2) throw_shape_error("matmul", "needs 2-D operands", a.shape(), b.shape());
    const std::size_t m = a.size(transpose_a ? 1 : 0), k = a.size(transpose_a ? 0 : 1);
    const std::size_t k_b = b.size(transpose_b ? 1 : 0), n = b.size(transpose_b ? 0 : 1);
    if (k != k_b) throw_shape_error("matmul", "inner dimensions differ", a.shape(), b.shape());
    xt::xarray<T> c = xt::xarray<T>::from_shape({m, n});
    if (k == 0) c.fill(T(0));
    else
        blas::gemm(transpose_a, transpose_b, m, n, k, T(1), a.value().data(), a.size(1), b.value().data(), b.size(1),
                   T(0), c.data(), n);
    return record_op<T>("matmul", {a, b}, std::move(c),
                        [transpose_a, transpose_b](const BackwardContext<T>& ctx) -> Gradients<T> {
                            // C = op(A) op(B): dop(A) = dC op(B)^T and dop(B) = op(A)^T dC, written
                            // so that no transpose is materialised.
                            const auto &g = ctx.grad_output(0), &a = ctx.input(0), &b = ctx.input(1);
                            Tensor<T> grad_a, grad_b;
                            if (ctx.needs_input_grad(0))
                                grad_a = transpose_a ? gemm(b, g, transpose_b, true) : gemm(g, b, false, !transpose_b);
                            if (ctx.needs_input_grad(1))
                                grad_b = transpose_b ? gemm(g, a, true, transpose_a) : gemm(a, g, !transpose_a, false);
                            return {grad_a, grad_b};
                        });
}

template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
    if (a.dim() == 2 && b.dim() == 2) return gemm(a, b, false, false);
    if (a.dim() == 3 && b.dim() == 2) {
        // [B, M, K] x [K, N]: one GEMM over the B*M rows.
        const std::size_t batch = a.size(0), rows = a.size(1), inner = a.size(2);
        if (inner != b.size(0)) throw_shape_error("matmul", "inner dimensions differ", a.shape(), b.shape());
        Tensor<T> product = gemm(reshape(a, {batch * rows, inner}), b, false, false);
        return reshape(product, {batch, rows, b.size(1)});
    }
    throw_shape_error("matmul", "supports 2-D x 2-D and 3-D x 2-D", a.shape(), b.shape());
}

// ---- layout ----

template <class T>
Tensor<T> reshape(const Tensor<T>& x, const Shape& shape) {
    if (element_count(shape) != x.size()) throw_shape_error("reshape", "element counts differ", x.shape(), shape);
    if (x.shape() == shape) return x;
    xt::xarray<T> value = x.value();
    value.reshape(shape);
    return record_op<T>("reshape", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {reshape(ctx.grad_output(0), ctx.input(0).shape())};
    });
}

template <class T>
Tensor<T> transpose(const Tensor<T>& x) {
    if (x.dim() != 2) throw_shape_error("transpose", "needs a 2-D tensor", x.shape());
    return permute(x, {1, 0});
}

template <class T>
Tensor<T> permute(const Tensor<T>& x, const std::vector<std::size_t>& axes) {
    std::vector<std::size_t> sorted = axes;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::size_t> identity(x.dim());
    std::iota(identity.begin(), identity.end(), std::size_t{0});
    if (sorted != identity) throw_shape_error("permute", fmt::format("axes [{}] are not a permutation of the tensor's axes", fmt::join(axes, ", ")), x.shape());
    xt::xarray<T> value = xt::transpose(x.value(), axes);
    return record_op<T>("permute", {x}, std::move(value), [axes](const BackwardContext<T>& ctx) -> Gradients<T> {
        std::vector<std::size_t> inverse(axes.size());
        for (std::size_t i = 0; i < axes.size(); ++i) inverse[axes[i]] = i;
        return {permute(ctx.grad_output(0), inverse)};
    });
}

template Tensor<float> broadcast_to(const Tensor<float>&, const Shape&);
template Tensor<double> broadcast_to(const Tensor<double>&, const Shape&);
template Tensor<float> sum_to(const Tensor<float>&, const Shape&);
template Tensor<double> sum_to(const Tensor<double>&, const Shape&);
template Tensor<float> gemm(const Tensor<float>&, const Tensor<float>&, bool, bool);
template Tensor<double> gemm(const Tensor<double>&, const Tensor<double>&, bool, bool);
template Tensor<float> matmul(const Tensor<float>&, const Tensor<float>&);
template Tensor<double> matmul(const Tensor<double>&, const Tensor<double>&);
template Tensor<float> reshape(const Tensor<float>&, const Shape&);
template Tensor<double> reshape(const Tensor<double>&, const Shape&);
template Tensor<float> transpose(const Tensor<float>&);
template Tensor<double> transpose(const Tensor<double>&);
template Tensor<float> permute(const Tensor<float>&, const std::vector<std::size_t>&);
template Tensor<double> permute(const Tensor<double>&, const std::vector<std::size_t>&);

}  // namespace rw
