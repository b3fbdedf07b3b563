// Reductions and the softmax family. Each backward sits below its forward.

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xtensor.hpp>

#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

namespace {

void check_axes(std::string_view op, const Shape& shape, const std::vector<std::size_t>& axes) {
    for (std::size_t axis : axes)
        if (axis >= shape.size()) throw_shape_error(op, fmt::format("axis {} out of range", axis), shape);
}

// The reduced shape with the summed axes kept as 1, for broadcasting a gradient back.
Shape kept_shape(const Shape& shape, const std::vector<std::size_t>& axes) {
    Shape kept = shape;
    for (std::size_t axis : axes) kept[axis] = 1;
    return kept;
}

// Sums `axes` away, leaving each as an axis of extent 1, in one pass over the row-major buffer.
// Not xt::sum(..., immediate): in xtensor 0.24 the immediate reducer with std::vector axes
// crashes (segfault or bad_alloc), and this runs in every broadcast backward.
template <class T>
xt::xarray<T> sum_keeping_axes(const xt::xarray<T>& x, const std::vector<std::size_t>& axes) {
    const Shape shape = to_shape(x.shape());
    if (shape.empty()) return x;
    const Shape kept = kept_shape(shape, axes);
    xt::xarray<T> result = xt::zeros<T>(kept);
    if (x.size() == 0) return result;
    // The output offset moves by stride[d] when input axis d advances; summed axes have stride 0
    // so that all of their elements land on the same output element.
    std::vector<std::size_t> stride(shape.size());
    std::size_t step = 1;
    for (std::size_t d = shape.size(); d-- > 0;) {
        stride[d] = kept[d] == 1 ? 0 : step;
        step *= kept[d];
    }
    const std::size_t last = shape.size() - 1, inner = shape[last];
    std::vector<std::size_t> index(shape.size(), 0);
    const T* in = x.data();
    T* out = result.data();
    std::size_t offset = 0;
    for (std::size_t flat = 0; flat < x.size(); flat += inner) {
        if (stride[last] == 0) {
            T total = 0;
            for (std::size_t e = 0; e < inner; ++e) total += in[flat + e];
            out[offset] += total;
        } else {
            for (std::size_t e = 0; e < inner; ++e) out[offset + e] += in[flat + e];
        }
        for (std::size_t d = last; d-- > 0;) {
            if (++index[d] < shape[d]) {
                offset += stride[d];
                break;
            }
            offset -= stride[d] * (shape[d] - 1);
            index[d] = 0;
        }
    }
    return result;
}

// Softmax along one axis of a row-major array, computed as exp(x - max) / sum(exp(x - max)) so
// that large logits cannot overflow. With `log` it returns x - max - log(sum(exp(x - max)))
// directly, which stays finite where log(softmax) would reach log(0).
template <class T>
xt::xarray<T> softmax_along(const xt::xarray<T>& x, std::size_t axis, bool log) {
    std::size_t outer = 1, inner = 1;
    for (std::size_t i = 0; i < axis; ++i) outer *= x.shape()[i];
    for (std::size_t i = axis + 1; i < x.dimension(); ++i) inner *= x.shape()[i];
    const std::size_t extent = x.shape()[axis];
    xt::xarray<T> y = xt::xarray<T>::from_shape(x.shape());
    // One running maximum and sum per inner position, so every pass reads memory in order.
    std::vector<T> maximum(inner), total(inner);
    for (std::size_t o = 0; o < outer; ++o) {
        const T* in = x.data() + o * extent * inner;
        T* out = y.data() + o * extent * inner;
        std::fill(maximum.begin(), maximum.end(), -std::numeric_limits<T>::infinity());
        for (std::size_t k = 0; k < extent; ++k)
            for (std::size_t i = 0; i < inner; ++i) maximum[i] = std::max(maximum[i], in[k * inner + i]);
        std::fill(total.begin(), total.end(), T(0));
        for (std::size_t k = 0; k < extent; ++k)
            for (std::size_t i = 0; i < inner; ++i) {
                const T e = std::exp(in[k * inner + i] - maximum[i]);
                out[k * inner + i] = e;
                total[i] += e;
            }
        if (log) {
            for (std::size_t i = 0; i < inner; ++i) total[i] = maximum[i] + std::log(total[i]);
            for (std::size_t k = 0; k < extent; ++k)
                for (std::size_t i = 0; i < inner; ++i) out[k * inner + i] = in[k * inner + i] - total[i];
        } else {
            for (std::size_t k = 0; k < extent; ++k)
                for (std::size_t i = 0; i < inner; ++i) out[k * inner + i] /= total[i];
        }
    }
    return y;
}

}  // namespace

template <class T>
Tensor<T> sum(const Tensor<T>& x) {
    const T total = xt::sum(x.value())();
    return record_op<T>("sum", {x}, xt::xarray<T>(total),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            return {broadcast_to(ctx.grad_output(0), ctx.input(0).shape())};
                        },
                        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {sum(ctx.tangent(0))}; });
}

template <class T>
Tensor<T> sum(const Tensor<T>& x, const std::vector<std::size_t>& axes, bool keepdims) {
    check_axes("sum", x.shape(), axes);
    xt::xarray<T> value = sum_keeping_axes(x.value(), axes);
    if (!keepdims) {
        Shape reduced;
        for (std::size_t d = 0; d < x.dim(); ++d)
            if (std::find(axes.begin(), axes.end(), d) == axes.end()) reduced.push_back(x.size(d));
        value.reshape(reduced);
    }
    auto shared = std::make_shared<const std::vector<std::size_t>>(axes);  // one copy for both rules
    return record_op<T>("sum", {x}, std::move(value), [shared](const BackwardContext<T>& ctx) -> Gradients<T> {
        const Shape shape = ctx.input(0).shape();
        return {broadcast_to(reshape(ctx.grad_output(0), kept_shape(shape, *shared)), shape)};
    }, [shared, keepdims](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {sum(ctx.tangent(0), *shared, keepdims)};
    });
}

template <class T>
Tensor<T> mean(const Tensor<T>& x) {
    if (x.size() == 0) throw_shape_error("mean", "of an empty tensor", x.shape());
    return mul_scalar(sum(x), T(1) / T(x.size()));
}

template <class T>
Tensor<T> mean(const Tensor<T>& x, const std::vector<std::size_t>& axes, bool keepdims) {
    check_axes("mean", x.shape(), axes);
    std::size_t count = 1;
    for (std::size_t axis : axes) count *= x.size(axis);
    if (count == 0) throw_shape_error("mean", "over an empty axis", x.shape());
    return mul_scalar(sum(x, axes, keepdims), T(1) / T(count));
}

template <class T>
Tensor<T> softmax(const Tensor<T>& x, std::size_t axis) {
    check_axes("softmax", x.shape(), {axis});
    return record_op<T>("softmax", {x}, softmax_along(x.value(), axis, false), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        const Tensor<T> y = ctx.output(0);
        return {mul(y, sub(g, sum(mul(g, y), {axis}, true)))};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // dy = y (dx - Σ_axis y dx): the Jacobian is symmetric, so the same form as the backward
        const Tensor<T> t = ctx.tangent(0), y = ctx.output(0);
        return {mul(y, sub(t, sum(mul(t, y), {axis}, true)))};
    });
}

template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, std::size_t axis) {
    check_axes("log_softmax", x.shape(), {axis});
    return record_op<T>("log_softmax", {x}, softmax_along(x.value(), axis, true), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        return {sub(g, mul(exp(ctx.output(0)), sum(g, {axis}, true)))};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // dy = dx - Σ_axis softmax(x) dx
        const Tensor<T> t = ctx.tangent(0);
        return {sub(t, sum(mul(exp(ctx.output(0)), t), {axis}, true))};
    });
}

template <class T>
xt::xarray<std::int64_t> argmax(const Tensor<T>& x, std::size_t axis) {
    const Shape shape = x.shape();
    check_axes("argmax", shape, {axis});
    if (shape[axis] == 0) throw_shape_error("argmax", fmt::format("axis {} is empty", axis), shape);
    std::size_t outer = 1, inner = 1;
    for (std::size_t i = 0; i < axis; ++i) outer *= shape[i];
    for (std::size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
    const std::size_t extent = shape[axis];
    Shape reduced = shape;
    reduced.erase(reduced.begin() + std::ptrdiff_t(axis));
    xt::xarray<std::int64_t> indices = xt::xarray<std::int64_t>::from_shape(reduced);
    const T* in = x.value().data();
    std::int64_t* out = indices.data();
    for (std::size_t o = 0; o < outer; ++o)
        for (std::size_t e = 0; e < inner; ++e) {
            const T* run = in + o * extent * inner + e;
            std::size_t best = 0;
            // NaN wins, as in torch.argmax: a NaN logit is then visible rather than skipped.
            for (std::size_t k = 1; k < extent; ++k)
                if (!(run[k * inner] <= run[best * inner]) && !std::isnan(run[best * inner])) best = k;
            out[o * inner + e] = std::int64_t(best);
        }
    return indices;
}

#define REWIND_REDUCE_OPS(T)                                                                     \
    template Tensor<T> sum(const Tensor<T>&);                                                    \
    template Tensor<T> sum(const Tensor<T>&, const std::vector<std::size_t>&, bool);             \
    template Tensor<T> mean(const Tensor<T>&);                                                   \
    template Tensor<T> mean(const Tensor<T>&, const std::vector<std::size_t>&, bool);            \
    template Tensor<T> softmax(const Tensor<T>&, std::size_t);                                   \
    template Tensor<T> log_softmax(const Tensor<T>&, std::size_t);                               \
    template xt::xarray<std::int64_t> argmax(const Tensor<T>&, std::size_t);
REWIND_REDUCE_OPS(float)
REWIND_REDUCE_OPS(double)

}  // namespace rw
