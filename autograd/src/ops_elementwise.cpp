// Element-wise ops. Each forward is one loop over the elements (or one xtensor expression);
// each backward sits right below it, written with differentiable ops so gradients of gradients
// work.

#include <cmath>
#include <limits>
#include <memory>

#include <xtensor/xmath.hpp>
#include <xsimd/xsimd.hpp>
#include <xtensor/xoperation.hpp>

#include "rewind/autograd/broadcast.hpp"
#include "rewind/autograd/checked_size.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"
#include "forward_rules.hpp"
#include "pool.hpp"

namespace rw {

Shape broadcast_shapes(std::string_view op, const Shape& a, const Shape& b) {
    Shape result(std::max(a.size(), b.size()), 1);
    for (std::size_t i = 0; i < result.size(); ++i) {
        std::size_t da = i < result.size() - a.size() ? 1 : a[i - (result.size() - a.size())];
        std::size_t db = i < result.size() - b.size() ? 1 : b[i - (result.size() - b.size())];
        if (da != db && da != 1 && db != 1) throw_shape_error(op, "shapes do not broadcast", a, b);
        result[i] = da == 1 ? db : da;
    }
    // Two shapes that each fit can broadcast to one that does not ([2^40, 1] and [1, 2^40]).
    checked_element_count(op, result, sizeof(double));
    return result;
}

namespace {

// `op` on every pair of elements. Equal shapes and a row against a full array run as plain
// loops over the row-major buffers (vectorised by the compiler); anything else goes through
// xtensor's general broadcasting. `op` takes two scalars or two xtensor expressions.
template <class T, class Op>
xt::xarray<T> evaluate(const Tensor<T>& a, const Tensor<T>& b, std::string_view op_name, Op op) {
    const auto &x = a.value(), &y = b.value();
    if (x.shape() == y.shape()) {
        xt::xarray<T> out = detail::ArrayCache<T>::take(x.shape());
        const T *px = x.data(), *py = y.data();
        T* po = out.data();
        for (std::size_t i = 0, n = out.size(); i < n; ++i) po[i] = op(px[i], py[i]);
        return out;
    }
    const bool x_full = broadcast_row_length(x.shape(), y.shape()) != 0;
    if (x_full || broadcast_row_length(y.shape(), x.shape()) != 0) {
        const auto& full = x_full ? x : y;
        const std::size_t n = (x_full ? y : x).size();
        xt::xarray<T> out = detail::ArrayCache<T>::take(full.shape());
        const T *px = x.data(), *py = y.data();
        T* po = out.data();
        for (std::size_t r = 0, rows = out.size() / n; r < rows; ++r, po += n)
            if (x_full)
                for (std::size_t j = 0; j < n; ++j) po[j] = op(px[r * n + j], py[j]);
            else
                for (std::size_t j = 0; j < n; ++j) po[j] = op(px[j], py[r * n + j]);
        return out;
    }
    broadcast_shapes(op_name, a.shape(), b.shape());
    return op(x, y);
}

// `f` on every element, as a plain loop: for tiny tensors xtensor's expression machinery costs
// far more than the arithmetic, and simple arithmetic vectorises by itself.
template <class T, class F>
xt::xarray<T> map(const xt::xarray<T>& x, F f) {
    xt::xarray<T> out = detail::ArrayCache<T>::take(x.shape());
    const T* px = x.data();
    T* po = out.data();
    for (std::size_t i = 0, n = out.size(); i < n; ++i) po[i] = f(px[i]);
    return out;
}

// Transcendental functions on xsimd batches: the scalar loop on small tensors; on larger ones
// `batch` on full batches and `scalar` (the std:: function) on the tail, as xtensor's own loop
// over xt::exp and friends does on an aligned array, which ours are.
template <class T, class Scalar, class Batch>
xt::xarray<T> map_lanes(const xt::xarray<T>& x, Scalar scalar, Batch batch) {
    constexpr std::size_t small = 32;
    if (x.size() <= small) return map(x, scalar);
    using V = xsimd::batch<T>;
    xt::xarray<T> out = detail::ArrayCache<T>::take(x.shape());
    const T* px = x.data();
    T* po = out.data();
    const std::size_t n = out.size();
    std::size_t i = 0;
    for (; i + V::size <= n; i += V::size) batch(V::load_unaligned(px + i)).store_unaligned(po + i);
    for (; i < n; ++i) po[i] = scalar(px[i]);
    return out;
}

// Note [Saturated arguments, generic ops]: xsimd's double exp and tanh convert x / ln 2 to a
// 64-bit integer before they look at its range; at |x| ~ 1e300, at infinities and at NaN that
// conversion is undefined behaviour (UBSan's float-cast-overflow: "-1.4427e+300 is outside the
// range of representable values of type 'long int'"). Past `bound` the function has saturated, in
// float and double (exp 0 or inf past 800, tanh -1 or 1 past 40), so the argument is clamped
// there and NaN kept out of the conversion, then put back, as nn's fused lanes do (Note
// [Saturated arguments] in fused/lanes.hpp): every result the unclamped call defined is unchanged.
template <class V, class F>
V saturated(const V& x, typename V::value_type bound, F f) {
    using T = typename V::value_type;
    const auto nan = xsimd::isnan(x);
    const V clamped = xsimd::select(x > V(bound), V(bound), xsimd::select(x < V(-bound), V(-bound), x));
    return xsimd::select(nan, x, f(xsimd::select(nan, V(T(0)), clamped)));
}

template <class V>
V exp_lanes(const V& x) {
    return saturated(x, typename V::value_type(800), [](const V& v) { return xsimd::exp(v); });
}

template <class V>
V tanh_lanes(const V& x) {
    return saturated(x, typename V::value_type(40), [](const V& v) { return xsimd::tanh(v); });
}

// xsimd's double log is wrong at subnormal arguments (log(4.9e-324) gives -746.5, not -744.4):
// such lanes, rare, take std::log.
template <class V>
V log_lanes(const V& x) {
    using T = typename V::value_type;
    V result = xsimd::log(x);
    const auto subnormal = (xsimd::abs(x) < V(std::numeric_limits<T>::min())) && (x != V(T(0)));
    if (!xsimd::any(subnormal)) return result;
    alignas(V::arch_type::alignment()) T in[V::size], out[V::size];
    x.store_aligned(in);
    result.store_aligned(out);
    for (std::size_t j = 0; j < V::size; ++j)
        if (in[j] != T(0) && std::abs(in[j]) < std::numeric_limits<T>::min()) out[j] = std::log(in[j]);
    return V::load_aligned(out);
}

// g summed down to x's shape (the backward of broadcasting), without building any Shape when
// they already agree, as they mostly do.
template <class T>
Tensor<T> sum_to_shape_of(const Tensor<T>& g, const Tensor<T>& x) {
    return g.value().shape() == x.value().shape() ? g : sum_to(g, x.shape());
}

}  // namespace

using detail::sum_of_tangents;

// ---- binary ----

template <class T>
Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) {
    auto value = evaluate(a, b, "add", [](const auto& x, const auto& y) { return x + y; });
    return record_op<T>("add", {a, b}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        return {sum_to_shape_of(g, ctx.input(0)), sum_to_shape_of(g, ctx.input(1))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // d(a + b) = da + db, each broadcast to the output's shape
        return {sum_of_tangents(ctx, ctx.output(0).shape(), [](const Tensor<T>& t, std::size_t) { return t; })};
    });
}

template <class T>
Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) {
    auto value = evaluate(a, b, "sub", [](const auto& x, const auto& y) { return x - y; });
    return record_op<T>("sub", {a, b}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        return {sum_to_shape_of(g, ctx.input(0)), ctx.needs_input_grad(1) ? sum_to_shape_of(neg(g), ctx.input(1)) : Tensor<T>()};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // d(a - b) = da - db
        return {sum_of_tangents(ctx, ctx.output(0).shape(), [](const Tensor<T>& t, std::size_t i) { return i == 0 ? t : neg(t); })};
    });
}

template <class T>
Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) {
    auto value = evaluate(a, b, "mul", [](const auto& x, const auto& y) { return x * y; });
    return record_op<T>("mul", {a, b}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        const auto &a = ctx.input(0), &b = ctx.input(1);
        return {ctx.needs_input_grad(0) ? sum_to_shape_of(mul(g, b), a) : Tensor<T>(),
                ctx.needs_input_grad(1) ? sum_to_shape_of(mul(g, a), b) : Tensor<T>()};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // d(a b) = da b + a db
        return {sum_of_tangents(ctx, ctx.output(0).shape(),
                                [&](const Tensor<T>& t, std::size_t i) { return mul(t, ctx.input(1 - i)); })};
    });
}

template <class T>
Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) {
    auto value = evaluate(a, b, "div", [](const auto& x, const auto& y) { return x / y; });
    return record_op<T>("div", {a, b}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        const auto &a = ctx.input(0), &b = ctx.input(1);
        Tensor<T> grad_a = div(g, b);  // d(a/b)/db = -(a/b)/b, so grad_b = -grad_a * (a/b)
        return {sum_to_shape_of(grad_a, a),
                ctx.needs_input_grad(1) ? sum_to_shape_of(neg(mul(grad_a, ctx.output(0))), b) : Tensor<T>()};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        // d(a / b) = da / b - y db / b
        const auto &b = ctx.input(1), &y = ctx.output(0);
        return {sum_of_tangents(ctx, y.shape(), [&](const Tensor<T>& t, std::size_t i) {
            return i == 0 ? div(t, b) : neg(div(mul(t, y), b));
        })};
    });
}

template <class T>
Tensor<T> mul_mask(const Tensor<T>& a, const xt::xarray<T>& mask) {
    if (a.value().shape() != mask.shape()) throw_shape_error("mul_mask", "mask shape differs", a.shape(), to_shape(mask.shape()));
    // One copy of the mask, shared by both rules.
    auto shared = std::make_shared<const xt::xarray<T>>(mask);
    return record_op<T>("mul_mask", {a}, xt::xarray<T>(a.value() * mask), [shared](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {mul_mask(ctx.grad_output(0), *shared)};
    }, [shared](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {mul_mask(ctx.tangent(0), *shared)}; });
}

// ---- with a scalar ----

template <class T>
Tensor<T> neg(const Tensor<T>& a) {
    return record_op<T>("neg", {a}, map(a.value(), [](T v) { return -v; }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {neg(ctx.grad_output(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {neg(ctx.tangent(0))}; });
}

template <class T>
Tensor<T> add_scalar(const Tensor<T>& a, Scalar<T> b) {
    return record_op<T>("add_scalar", {a}, map(a.value(), [b](T v) { return v + b; }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {ctx.grad_output(0)};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {ctx.tangent(0)}; });
}

template <class T>
Tensor<T> mul_scalar(const Tensor<T>& a, Scalar<T> b) {
    return record_op<T>("mul_scalar", {a}, map(a.value(), [b](T v) { return v * b; }), [b](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {mul_scalar(ctx.grad_output(0), b)};
    }, [b](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {mul_scalar(ctx.tangent(0), b)}; });
}

// ---- unary ----

template <class T>
Tensor<T> tanh(const Tensor<T>& x) {
    return record_op<T>("tanh", {x}, map_lanes(x.value(), [](T v) { return std::tanh(v); }, [](const auto& v) { return tanh_lanes(v); }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {tanh_backward(ctx.grad_output(0), ctx.output(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {tanh_backward(ctx.tangent(0), ctx.output(0))};  // (1 - y^2) dx
    });
}

template <class T>
Tensor<T> tanh_backward(const Tensor<T>& grad, const Tensor<T>& y) {
    if (grad.value().shape() != y.value().shape()) throw_shape_error("tanh_backward", "shapes differ", grad.shape(), y.shape());
    auto value = evaluate(grad, y, "tanh_backward", [](const auto& g, const auto& y) { return g * (T(1) - y * y); });
    return record_op<T>("tanh_backward", {grad, y}, std::move(value),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            const auto &gg = ctx.grad_output(0), &g = ctx.input(0), &y = ctx.input(1);
                            // d/dg = 1 - y^2;  d/dy = -2 g y
                            return {tanh_backward(gg, y),
                                    ctx.needs_input_grad(1) ? mul_scalar(mul(mul(gg, g), y), T(-2)) : Tensor<T>()};
                        },
                        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            // d(h (1 - y²)) = dh (1 - y²) - 2 h y dy
                            const auto &h = ctx.input(0), &y = ctx.input(1);
                            return {sum_of_tangents(ctx, y.shape(), [&](const Tensor<T>& t, std::size_t i) {
                                return i == 0 ? tanh_backward(t, y) : mul_scalar(mul(mul(t, h), y), T(-2));
                            })};
                        });
}

template <class T>
Tensor<T> sigmoid(const Tensor<T>& x) {
    using V = xsimd::batch<T>;
    xt::xarray<T> value = map_lanes(x.value(), [](T v) { return T(1) / (T(1) + std::exp(-v)); },
                                    [](const V& v) { return V(T(1)) / (V(T(1)) + exp_lanes(V(-v))); });
    return record_op<T>("sigmoid", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {sigmoid_backward(ctx.grad_output(0), ctx.output(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {sigmoid_backward(ctx.tangent(0), ctx.output(0))};  // y (1 - y) dx
    });
}

template <class T>
Tensor<T> sigmoid_backward(const Tensor<T>& grad, const Tensor<T>& y) {
    if (grad.value().shape() != y.value().shape()) throw_shape_error("sigmoid_backward", "shapes differ", grad.shape(), y.shape());
    auto value = evaluate(grad, y, "sigmoid_backward", [](const auto& g, const auto& y) { return g * y * (T(1) - y); });
    return record_op<T>("sigmoid_backward", {grad, y}, std::move(value),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            const auto &gg = ctx.grad_output(0), &g = ctx.input(0), &y = ctx.input(1);
                            // d/dg = y (1 - y);  d/dy = g (1 - 2y)
                            return {sigmoid_backward(gg, y),
                                    ctx.needs_input_grad(1) ? mul(mul(gg, g), add_scalar(mul_scalar(y, T(-2)), T(1))) : Tensor<T>()};
                        },
                        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            // d(h y (1 - y)) = dh y (1 - y) + h (1 - 2y) dy
                            const auto &h = ctx.input(0), &y = ctx.input(1);
                            return {sum_of_tangents(ctx, y.shape(), [&](const Tensor<T>& t, std::size_t i) {
                                return i == 0 ? sigmoid_backward(t, y) : mul(mul(t, h), add_scalar(mul_scalar(y, T(-2)), T(1)));
                            })};
                        });
}

template <class T>
Tensor<T> relu(const Tensor<T>& x) {
    return record_op<T>("relu", {x}, map(x.value(), [](T v) { return v > T(0) ? v : T(0); }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {mul_mask(ctx.grad_output(0), map(ctx.input(0).value(), [](T v) { return T(v > T(0)); }))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {mul_mask(ctx.tangent(0), map(ctx.input(0).value(), [](T v) { return T(v > T(0)); }))};
    });
}

template <class T>
Tensor<T> exp(const Tensor<T>& x) {
    return record_op<T>("exp", {x}, map_lanes(x.value(), [](T v) { return std::exp(v); }, [](const auto& v) { return exp_lanes(v); }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {mul(ctx.grad_output(0), ctx.output(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {mul(ctx.tangent(0), ctx.output(0))}; });
}

template <class T>
Tensor<T> log(const Tensor<T>& x) {
    return record_op<T>("log", {x}, map_lanes(x.value(), [](T v) { return std::log(v); }, [](const auto& v) { return log_lanes(v); }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {div(ctx.grad_output(0), ctx.input(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {div(ctx.tangent(0), ctx.input(0))}; });
}

template <class T>
Tensor<T> sqrt(const Tensor<T>& x) {
    return record_op<T>("sqrt", {x}, map(x.value(), [](T v) { return std::sqrt(v); }), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {div(mul_scalar(ctx.grad_output(0), T(0.5)), ctx.output(0))};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {div(mul_scalar(ctx.tangent(0), T(0.5)), ctx.output(0))}; });
}

template <class T>
Tensor<T> pow(const Tensor<T>& x, Scalar<T> exponent) {
    // std::pow, not xsimd's: that one goes through the same integer conversion as exp (note
    // [saturated arguments]) with no bound to clamp at (pow(0, 2) reaches it through log 0 = -inf).
    return record_op<T>("pow", {x}, map(x.value(), [exponent](T v) { return std::pow(v, exponent); }), [exponent](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& g = ctx.grad_output(0);
        if (exponent == T(0)) return {mul_scalar(g, T(0))};
        return {mul(mul_scalar(g, exponent), pow(ctx.input(0), exponent - T(1)))};
    }, [exponent](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        const auto& t = ctx.tangent(0);
        if (exponent == T(0)) return {mul_scalar(t, T(0))};
        return {mul(mul_scalar(t, exponent), pow(ctx.input(0), exponent - T(1)))};
    });
}

template <class T>
Tensor<T> clamp(const Tensor<T>& x, Scalar<T> low, Scalar<T> high) {
    if (low > high) throw std::invalid_argument("clamp: low is greater than high");
    return record_op<T>("clamp", {x}, xt::xarray<T>(xt::clip(x.value(), low, high)), [low, high](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& v = ctx.input(0).value();
        // Like PyTorch, the gradient passes at the bounds themselves.
        return {mul_mask(ctx.grad_output(0), xt::xarray<T>(xt::cast<T>(v >= low && v <= high)))};
    }, [low, high](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        const auto& v = ctx.input(0).value();
        return {mul_mask(ctx.tangent(0), xt::xarray<T>(xt::cast<T>(v >= low && v <= high)))};
    });
}

// ---- instantiations ----

#define REWIND_ELEMENTWISE_OPS(T)                                                        \
    template Tensor<T> add(const Tensor<T>&, const Tensor<T>&);                          \
    template Tensor<T> sub(const Tensor<T>&, const Tensor<T>&);                          \
    template Tensor<T> mul(const Tensor<T>&, const Tensor<T>&);                          \
    template Tensor<T> div(const Tensor<T>&, const Tensor<T>&);                          \
    template Tensor<T> mul_mask(const Tensor<T>&, const xt::xarray<T>&);                 \
    template Tensor<T> neg(const Tensor<T>&);                                            \
    template Tensor<T> add_scalar(const Tensor<T>&, T);                                  \
    template Tensor<T> mul_scalar(const Tensor<T>&, T);                                  \
    template Tensor<T> tanh(const Tensor<T>&);                                           \
    template Tensor<T> tanh_backward(const Tensor<T>&, const Tensor<T>&);                \
    template Tensor<T> sigmoid(const Tensor<T>&);                                        \
    template Tensor<T> sigmoid_backward(const Tensor<T>&, const Tensor<T>&);             \
    template Tensor<T> relu(const Tensor<T>&);                                           \
    template Tensor<T> exp(const Tensor<T>&);                                            \
    template Tensor<T> log(const Tensor<T>&);                                            \
    template Tensor<T> sqrt(const Tensor<T>&);                                           \
    template Tensor<T> pow(const Tensor<T>&, T);                                         \
    template Tensor<T> clamp(const Tensor<T>&, T, T);
REWIND_ELEMENTWISE_OPS(float)
REWIND_ELEMENTWISE_OPS(double)

}  // namespace rw
