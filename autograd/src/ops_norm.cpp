// Variance and layer normalisation, PyTorch's semantics. Each backward sits below its forward and
// recomputes the mean and the normalised input with differentiable ops (rather than reading
// saved constants), so that gradients of gradients are right.

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"
#include "forward_rules.hpp"

namespace rw {

namespace {

// The axes to reduce: `axes` checked (in range, distinct), or every axis when it is empty (as
// torch.var(x, dim=[])).
std::vector<std::size_t> reduction_axes(std::string_view op, const Shape& shape, const std::vector<std::size_t>& axes) {
    std::vector<std::size_t> result = axes;
    if (result.empty())
        for (std::size_t d = 0; d < shape.size(); ++d) result.push_back(d);
    for (std::size_t i = 0; i < result.size(); ++i) {
        if (result[i] >= shape.size()) throw_shape_error(op, fmt::format("axis {} out of range", result[i]), shape);
        if (std::find(result.begin(), result.begin() + std::ptrdiff_t(i), result[i]) != result.begin() + std::ptrdiff_t(i))
            throw_shape_error(op, fmt::format("axis {} given twice in {}", result[i], axes), shape);
    }
    return result;
}

Shape kept_shape(const Shape& shape, const std::vector<std::size_t>& axes) {
    Shape kept = shape;
    for (std::size_t axis : axes) kept[axis] = 1;
    return kept;
}

}  // namespace

template <class T>
Tensor<T> var(const Tensor<T>& x, const std::vector<std::size_t>& axes_in, bool unbiased, bool keepdims) {
    const Shape shape = x.shape();
    const std::vector<std::size_t> axes = reduction_axes("var", shape, axes_in);
    std::size_t count = 1;
    for (std::size_t axis : axes) count *= shape[axis];
    if (count == 0) throw_shape_error("var", "over an empty axis", shape);
    // N - 1 may be 0: the result is then NaN, as PyTorch's (which also warns).
    const T divisor = T(count - (unbiased ? 1 : 0)), scale = T(2) / divisor;
    xt::xarray<T> value;
    {
        // Two passes (deviations from the mean, then their squares) rather than E[x²] - E[x]²,
        // which cancels catastrophically for a large mean.
        NoGradGuard no_grad;
        const Tensor<T> deviation = sub(x, mean(x, axes, true));
        value = sum(mul(deviation, deviation), axes, keepdims).value() / divisor;
    }
    return record_op<T>("var", {x}, std::move(value), [axes, scale, keepdims](const BackwardContext<T>& ctx) -> Gradients<T> {
        const Tensor<T>& x = ctx.input(0);
        Tensor<T> g = ctx.grad_output(0);
        if (!keepdims) g = reshape(g, kept_shape(x.shape(), axes));
        return {mul(mul_scalar(g, scale), sub(x, mean(x, axes, true)))};
    }, [axes, scale, keepdims](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // d var = (2 / divisor) Σ_A (x - mean_A x) dx
        const Tensor<T>& x = ctx.input(0);
        return {mul_scalar(sum(mul(sub(x, mean(x, axes, true)), ctx.tangent(0)), axes, keepdims), scale)};
    });
}

template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const Shape& normalized_shape, const Tensor<T>& weight, const Tensor<T>& bias,
                     double eps) {
    const Shape shape = x.shape();
    const std::size_t k = normalized_shape.size();
    if (k == 0 || k > shape.size() || !std::equal(normalized_shape.begin(), normalized_shape.end(), shape.end() - std::ptrdiff_t(k)))
        throw_shape_error("layer_norm", "normalized_shape must be the input's last axes", shape, normalized_shape);
    for (const auto& [name, parameter] : {std::pair{"weight", &weight}, std::pair{"bias", &bias}})
        if (parameter->defined() && parameter->shape() != normalized_shape)
            throw_shape_error("layer_norm", fmt::format("{} must have normalized_shape", name), parameter->shape(), normalized_shape);
    if (!(eps >= 0)) throw std::invalid_argument(fmt::format("layer_norm: eps must be non-negative, got {}", eps));
    std::size_t n = 1;
    for (std::size_t extent : normalized_shape) n *= extent;
    if (n == 0) throw_shape_error("layer_norm", "over an empty normalized_shape", shape, normalized_shape);

    // One row of n elements per normalised vector: mean, biased variance (two passes), scale.
    xt::xarray<T> value = xt::xarray<T>::from_shape(x.value().shape());
    const T* in = x.value().data();
    T* out = value.data();
    const T* w = weight.defined() ? weight.value().data() : nullptr;
    const T* b = bias.defined() ? bias.value().data() : nullptr;
    for (std::size_t r = 0, rows = x.size() / n; r < rows; ++r, in += n, out += n) {
        T total = 0;
        for (std::size_t j = 0; j < n; ++j) total += in[j];
        const T mu = total / T(n);
        T squares = 0;
        for (std::size_t j = 0; j < n; ++j) squares += (in[j] - mu) * (in[j] - mu);
        const T rstd = T(1) / std::sqrt(squares / T(n) + T(eps));
        for (std::size_t j = 0; j < n; ++j) {
            T y = (in[j] - mu) * rstd;
            if (w) y *= w[j];
            if (b) y += b[j];
            out[j] = y;
        }
    }

    std::vector<Tensor<T>> inputs{x};
    if (weight.defined()) inputs.push_back(weight);
    if (bias.defined()) inputs.push_back(bias);
    const bool has_weight = weight.defined(), has_bias = bias.defined();
    std::vector<std::size_t> axes;
    for (std::size_t d = shape.size() - k; d < shape.size(); ++d) axes.push_back(d);
    return record_op<T>("layer_norm", std::move(inputs), std::move(value),
                        [axes, eps, has_weight, has_bias](const BackwardContext<T>& ctx) -> Gradients<T> {
        const Tensor<T>& g = ctx.grad_output(0);
        const Tensor<T>& x = ctx.input(0);
        const std::size_t bias_index = has_weight ? 2 : 1;
        Gradients<T> grads(ctx.num_inputs());
        const bool need_x = ctx.needs_input_grad(0), need_weight = has_weight && ctx.needs_input_grad(1);
        if (need_x || need_weight) {
            // x̂ = (x - mean) rsqrt(var + eps), recomputed with ops so create_graph differentiates it.
            const Tensor<T> rstd = rsqrt(add_scalar(var(x, axes, false, true), T(eps)));
            const Tensor<T> normalised = mul(sub(x, mean(x, axes, true)), rstd);
            if (need_weight) grads[1] = sum_to(mul(g, normalised), ctx.input(1).shape());
            if (need_x) {
                // dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)), dx̂ = g weight.
                const Tensor<T> dnormalised = has_weight ? mul(g, ctx.input(1)) : g;
                grads[0] = mul(rstd, sub(sub(dnormalised, mean(dnormalised, axes, true)),
                                         mul(normalised, mean(mul(dnormalised, normalised), axes, true))));
            }
        }
        if (has_bias && ctx.needs_input_grad(bias_index)) grads[bias_index] = sum_to(g, ctx.input(bias_index).shape());
        return grads;
    }, [axes, eps, has_weight](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // dy = dx̂ w + x̂ dw + db, dx̂ = r (dx - mean_A dx - x̂ mean_A(x̂ dx))
        const Tensor<T>& x = ctx.input(0);
        const Shape shape = x.shape();
        const Tensor<T> rstd = rsqrt(add_scalar(var(x, axes, false, true), T(eps)));
        const Tensor<T> normalised = mul(sub(x, mean(x, axes, true)), rstd);
        return {detail::sum_of_tangents(ctx, shape, [&](const Tensor<T>& t, std::size_t i) {
            if (i == 0) {
                const Tensor<T> dnormalised =
                    mul(rstd, sub(sub(t, mean(t, axes, true)), mul(normalised, mean(mul(normalised, t), axes, true))));
                return has_weight ? mul(dnormalised, ctx.input(1)) : dnormalised;
            }
            return has_weight && i == 1 ? mul(normalised, t) : t;  // dw, db (broadcast over the rows)
        })};
    });
}

#define REWIND_NORM_OPS(T)                                                                              \
    template Tensor<T> var(const Tensor<T>&, const std::vector<std::size_t>&, bool, bool);              \
    template Tensor<T> layer_norm(const Tensor<T>&, const Shape&, const Tensor<T>&, const Tensor<T>&, double);
REWIND_NORM_OPS(float)
REWIND_NORM_OPS(double)

}  // namespace rw
