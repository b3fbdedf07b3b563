// Ops that move elements around or multiply matrices. Each backward sits below its forward.

#include <algorithm>
#include <memory>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xbroadcast.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "rewind/autograd/broadcast.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/gemm.hpp"
#include "rewind/autograd/checked_size.hpp"
#include "rewind/autograd/ops.hpp"
#include "forward_rules.hpp"

namespace rw {

namespace {

void check_axis(std::string_view op, const Shape& shape, std::size_t axis) {
    if (axis >= shape.size()) throw_shape_error(op, fmt::format("axis {} out of range", axis), shape);
}

// A row-major array seen as [outer, extent, inner] around one axis. Slicing, concatenating,
// stacking and index selection then move contiguous runs of whole inner blocks with copy_n,
// instead of walking an xt::view element by element: the recurrent layers call them once per
// time step.
struct AxisLayout {
    std::size_t outer = 1;
    std::size_t extent = 1;
    std::size_t inner = 1;
};

AxisLayout layout_around(const Shape& shape, std::size_t axis) {
    AxisLayout layout;
    for (std::size_t i = 0; i < axis; ++i) layout.outer *= shape[i];
    layout.extent = axis < shape.size() ? shape[axis] : 1;
    for (std::size_t i = axis + 1; i < shape.size(); ++i) layout.inner *= shape[i];
    return layout;
}

// For every outer index, copies `count` positions of the axis (each `inner` elements) from
// position `from_begin` of an axis of extent `from_extent` to position `to_begin` of an axis of
// extent `to_extent`.
template <class T>
void copy_along_axis(const T* from, std::size_t from_extent, std::size_t from_begin, T* to, std::size_t to_extent,
                     std::size_t to_begin, std::size_t count, std::size_t outer, std::size_t inner) {
    const std::size_t run = count * inner;
    if (run == 0) return;
    for (std::size_t o = 0; o < outer; ++o)
        std::copy_n(from + (o * from_extent + from_begin) * inner, run, to + (o * to_extent + to_begin) * inner);
}

// The adjoints of slice and index_select (unstack, the adjoint of stack, is public); each pair
// calls the other in its backward.
template <class T>
Tensor<T> pad_slice(const Tensor<T>& part, std::size_t axis, std::size_t begin, std::size_t extent);
template <class T>
Tensor<T> index_add(const Tensor<T>& source, std::size_t axis, const std::vector<std::size_t>& indices,
                    std::size_t extent);

// Every input's tangent, zeros for those without one: the forward rule of concat and stack.
template <class T>
std::vector<Tensor<T>> tangents_or_zeros(const ForwardContext<T>& ctx) {
    std::vector<Tensor<T>> tangents;
    tangents.reserve(ctx.num_inputs());
    for (std::size_t i = 0; i < ctx.num_inputs(); ++i) tangents.push_back(ctx.tangent_or_zeros(i));
    return tangents;
}

}  // namespace

// ---- broadcasting and its adjoint ----

template <class T>
Tensor<T> broadcast_to(const Tensor<T>& x, const Shape& shape) {
    if (x.shape() == shape) return x;
    if (broadcast_shapes("broadcast_to", x.shape(), shape) != shape)
        throw_shape_error("broadcast_to", "cannot broadcast to the target shape", x.shape(), shape);
    xt::xarray<T> value;
    if (const std::size_t n = broadcast_row_length(shape, x.shape())) {
        // A row (or a scalar) repeated: whole-row copies rather than xtensor's broadcast stepper.
        value = checked_array<T>("broadcast_to", shape);
        T* out = value.data();
        const T* row = x.value().data();
        if (n == 1) std::fill_n(out, value.size(), row[0]);  // a scalar (a loss's seed): one fill
        else
            for (std::size_t r = 0, rows = value.size() / n; r < rows; ++r) std::copy_n(row, n, out + r * n);
    } else {
        value = xt::broadcast(x.value(), shape);
    }
    return record_op<T>("broadcast_to", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {sum_to(ctx.grad_output(0), ctx.input(0).shape())};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {broadcast_to(ctx.tangent(0), ctx.output(0).shape())}; });
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
    xt::xarray<T> summed;
    {
        // Only sum's value is wanted here; sum_to records its own node below.
        NoGradGuard no_grad;
        summed = std::move(sum(x, axes, true).mutable_value());
    }
    summed.reshape(shape);
    return record_op<T>("sum_to", {x}, std::move(summed), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {broadcast_to(ctx.grad_output(0), ctx.input(0).shape())};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {sum_to(ctx.tangent(0), ctx.output(0).shape())}; });
}

// ---- matrix products ----

namespace {

// An operand of gemm as a row-major matrix: the last axis is the columns, all others the rows.
struct Matrix {
    std::size_t rows = 1, columns;
};

Matrix as_matrix(const Shape& shape) {
    Matrix matrix{1, shape.back()};
    for (std::size_t i = 0; i + 1 < shape.size(); ++i) matrix.rows *= shape[i];
    return matrix;
}

// gemm and matmul share this body; `op` names the node and the errors after the op the user called.
template <class T>
Tensor<T> matrix_product(const char* op, const Tensor<T>& a, const Tensor<T>& b, bool transpose_a, bool transpose_b) {
    if (a.dim() < 2 || b.dim() < 2) throw_shape_error(op, "needs operands of at least 2 axes", a.shape(), b.shape());
    const Matrix ma = as_matrix(a.shape()), mb = as_matrix(b.shape());
    const std::size_t m = transpose_a ? ma.columns : ma.rows, k = transpose_a ? ma.rows : ma.columns;
    const std::size_t k_b = transpose_b ? mb.columns : mb.rows, n = transpose_b ? mb.rows : mb.columns;
    if (k != k_b)
        throw_shape_error(op, fmt::format("inner dimensions differ ({} of a{} against {} of b{})", k,
                                              transpose_a ? "^T" : "", k_b, transpose_b ? "^T" : ""),
                          a.shape(), b.shape());
    // An untransposed `a` keeps its leading axes (like torch.nn.functional.linear).
    Shape shape{m, n};
    if (!transpose_a) {
        shape = a.shape();
        shape.back() = n;
    }
    xt::xarray<T> c = checked_array<T>("matmul", shape);
    if (k == 0) c.fill(T(0));
    else
        blas::gemm(transpose_a, transpose_b, m, n, k, T(1), a.value().data(), ma.columns, b.value().data(),
                   mb.columns, T(0), c.data(), n);
    return record_op<T>(op, {a, b}, std::move(c),
                        [transpose_a, transpose_b](const BackwardContext<T>& ctx) -> Gradients<T> {
                            // C = op(A) op(B): dop(A) = dC op(B)^T and dop(B) = op(A)^T dC, written
                            // so that no transpose is materialised; the reshapes only restore the
                            // leading axes of an operand of more than two axes (no-ops otherwise).
                            const auto &g = ctx.grad_output(0), &a = ctx.input(0), &b = ctx.input(1);
                            Tensor<T> grad_a, grad_b;
                            if (ctx.needs_input_grad(0))
                                grad_a = reshape(transpose_a ? gemm(b, g, transpose_b, true) : gemm(g, b, false, !transpose_b),
                                                 a.shape());
                            if (ctx.needs_input_grad(1))
                                grad_b = reshape(transpose_b ? gemm(g, a, true, transpose_a) : gemm(a, g, !transpose_a, false),
                                                 b.shape());
                            return {grad_a, grad_b};
                        },
                        [transpose_a, transpose_b](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            // dC = op(dA) op(B) + op(A) op(dB)
                            const auto &a = ctx.input(0), &b = ctx.input(1);
                            return {detail::sum_of_tangents(ctx, ctx.output(0).shape(), [&](const Tensor<T>& t, std::size_t i) {
                                return i == 0 ? gemm(t, b, transpose_a, transpose_b) : gemm(a, t, transpose_a, transpose_b);
                            })};
                        });
}

}  // namespace

template <class T>
Tensor<T> gemm(const Tensor<T>& a, const Tensor<T>& b, bool transpose_a, bool transpose_b) {
    return matrix_product("gemm", a, b, transpose_a, transpose_b);
}

template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
    // [M, K] x [K, N], or [B, M, K] x [K, N] as one GEMM over the B*M rows.
    if ((a.dim() == 2 || a.dim() == 3) && b.dim() == 2) {
        if (a.shape().back() != b.size(0)) throw_shape_error("matmul", "inner dimensions differ", a.shape(), b.shape());
        return matrix_product("matmul", a, b, false, false);
    }
    throw_shape_error("matmul", "supports 2-D x 2-D and 3-D x 2-D", a.shape(), b.shape());
}

// ---- layout ----

template <class T>
Tensor<T> reshape(const Tensor<T>& x, const Shape& shape) {
    if (checked_element_count("reshape", shape, sizeof(T)) != x.size()) throw_shape_error("reshape", "element counts differ", x.shape(), shape);
    if (x.shape() == shape) return x;
    xt::xarray<T> value = x.value();
    value.reshape(shape);
    return record_op<T>("reshape", {x}, std::move(value), [](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {reshape(ctx.grad_output(0), ctx.input(0).shape())};
    }, [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {reshape(ctx.tangent(0), ctx.output(0).shape())}; });
}

template <class T>
Tensor<T> squeeze(const Tensor<T>& x, std::size_t axis) {
    Shape shape = x.shape();
    check_axis("squeeze", shape, axis);
    if (shape[axis] != 1)
        throw_shape_error("squeeze", fmt::format("axis {} has extent {}, expected 1", axis, shape[axis]), shape);
    shape.erase(shape.begin() + std::ptrdiff_t(axis));
    xt::xarray<T> value = x.value();
    value.reshape(shape);
    return record_op<T>("squeeze", {x}, std::move(value), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {unsqueeze(ctx.grad_output(0), axis)};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {squeeze(ctx.tangent(0), axis)}; });
}

template <class T>
Tensor<T> unsqueeze(const Tensor<T>& x, std::size_t axis) {
    Shape shape = x.shape();
    if (axis > shape.size())
        throw_shape_error("unsqueeze", fmt::format("axis {} out of range 0..{}", axis, shape.size()), shape);
    shape.insert(shape.begin() + std::ptrdiff_t(axis), 1);
    xt::xarray<T> value = x.value();
    value.reshape(shape);
    return record_op<T>("unsqueeze", {x}, std::move(value), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {squeeze(ctx.grad_output(0), axis)};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {unsqueeze(ctx.tangent(0), axis)}; });
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
    auto shared = std::make_shared<const std::vector<std::size_t>>(axes);  // one copy for both rules
    return record_op<T>("permute", {x}, std::move(value), [shared](const BackwardContext<T>& ctx) -> Gradients<T> {
        const auto& axes = *shared;
        std::vector<std::size_t> inverse(axes.size());
        for (std::size_t i = 0; i < axes.size(); ++i) inverse[axes[i]] = i;
        return {permute(ctx.grad_output(0), inverse)};
    }, [shared](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {permute(ctx.tangent(0), *shared)}; });
}

// ---- pieces along an axis ----

template <class T>
Tensor<T> slice(const Tensor<T>& x, std::size_t axis, std::size_t begin, std::size_t end) {
    const Shape shape = x.shape();
    check_axis("slice", shape, axis);
    if (begin > end || end > shape[axis])
        throw_shape_error("slice", fmt::format("range [{}, {}) does not fit axis {} of extent {}", begin, end, axis, shape[axis]),
                          shape);
    if (begin == 0 && end == shape[axis]) return x;
    const AxisLayout from = layout_around(shape, axis);
    Shape result_shape = shape;
    result_shape[axis] = end - begin;
    xt::xarray<T> value = checked_array<T>("slice", result_shape);
    copy_along_axis(x.value().data(), from.extent, begin, value.data(), end - begin, 0, end - begin, from.outer, from.inner);
    return record_op<T>("slice", {x}, std::move(value), [axis, begin, extent = from.extent](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {pad_slice(ctx.grad_output(0), axis, begin, extent)};
    }, [axis, begin, end](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {slice(ctx.tangent(0), axis, begin, end)}; });
}

namespace {

// The adjoint of slice: `part` written at [begin, begin + length) along `axis` of zeros whose
// axis has `extent` elements. Its backward is slice, which keeps slicing twice differentiable.
template <class T>
Tensor<T> pad_slice(const Tensor<T>& part, std::size_t axis, std::size_t begin, std::size_t extent) {
    Shape shape = part.shape();
    const std::size_t length = shape[axis];
    shape[axis] = extent;
    const AxisLayout to = layout_around(shape, axis);
    xt::xarray<T> value = xt::zeros<T>(shape);
    copy_along_axis(part.value().data(), length, 0, value.data(), extent, begin, length, to.outer, to.inner);
    return record_op<T>("pad_slice", {part}, std::move(value), [axis, begin, length](const BackwardContext<T>& ctx) -> Gradients<T> {
        return {slice(ctx.grad_output(0), axis, begin, begin + length)};
    }, [axis, begin, extent](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {pad_slice(ctx.tangent(0), axis, begin, extent)};
    });
}

}  // namespace

template <class T>
Tensor<T> concat(const std::vector<Tensor<T>>& parts, std::size_t axis) {
    if (parts.empty()) throw std::invalid_argument("concat: needs at least one tensor");
    const Shape first = parts[0].shape();
    check_axis("concat", first, axis);
    Shape result_shape = first;
    result_shape[axis] = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const Shape shape = parts[i].shape();
        bool fits = shape.size() == first.size();
        for (std::size_t d = 0; fits && d < shape.size(); ++d) fits = d == axis || shape[d] == first[d];
        if (!fits)
            throw_shape_error("concat", fmt::format("tensor {} differs from tensor 0 outside axis {}", i, axis), first, shape);
        result_shape[axis] += shape[axis];
    }
    if (parts.size() == 1) return parts[0];

    const AxisLayout to = layout_around(result_shape, axis);
    xt::xarray<T> value = checked_array<T>("concat", result_shape);
    std::vector<std::size_t> offsets;  // where each part starts along the axis
    std::size_t offset = 0;
    for (const auto& part : parts) {
        const std::size_t length = part.size(axis);
        copy_along_axis(part.value().data(), length, 0, value.data(), to.extent, offset, length, to.outer, to.inner);
        offsets.push_back(offset);
        offset += length;
    }
    return record_op<T>("concat", parts, std::move(value), [axis, offsets](const BackwardContext<T>& ctx) -> Gradients<T> {
        Gradients<T> gradients(ctx.num_inputs());
        for (std::size_t i = 0; i < ctx.num_inputs(); ++i)
            if (ctx.needs_input_grad(i))
                gradients[i] = slice(ctx.grad_output(0), axis, offsets[i], offsets[i] + ctx.input(i).size(axis));
        return gradients;
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {concat(tangents_or_zeros(ctx), axis)}; });
}

template <class T>
Tensor<T> stack(const std::vector<Tensor<T>>& parts, std::size_t axis) {
    if (parts.empty()) throw std::invalid_argument("stack: needs at least one tensor");
    const Shape first = parts[0].shape();
    if (axis > first.size())
        throw_shape_error("stack", fmt::format("axis {} out of range for stacking", axis), first);
    for (std::size_t i = 1; i < parts.size(); ++i)
        if (parts[i].shape() != first)
            throw_shape_error("stack", fmt::format("tensor {} differs in shape from tensor 0", i), first, parts[i].shape());

    // Each part is one position of the new axis; everything after it is one contiguous block.
    Shape result_shape = first;
    result_shape.insert(result_shape.begin() + static_cast<std::ptrdiff_t>(axis), parts.size());
    const AxisLayout to = layout_around(result_shape, axis);
    xt::xarray<T> value = checked_array<T>("stack", result_shape);
    for (std::size_t i = 0; i < parts.size(); ++i)
        copy_along_axis(parts[i].value().data(), 1, 0, value.data(), parts.size(), i, 1, to.outer, to.inner);
    return record_op<T>("stack", parts, std::move(value), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        return unstack(ctx.grad_output(0), axis);
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {stack(tangents_or_zeros(ctx), axis)}; });
}

// The adjoint of stack: one output per position of `axis`, with that axis removed.
template <class T>
std::vector<Tensor<T>> unstack(const Tensor<T>& x, std::size_t axis) {
    const Shape shape = x.shape();
    check_axis("unstack", shape, axis);
    if (shape[axis] == 0) return {};
    const AxisLayout from = layout_around(shape, axis);
    Shape part_shape = shape;
    part_shape.erase(part_shape.begin() + static_cast<std::ptrdiff_t>(axis));
    std::vector<xt::xarray<T>> values;
    values.reserve(from.extent);
    for (std::size_t i = 0; i < from.extent; ++i) {
        values.push_back(checked_array<T>("unstack", part_shape));
        copy_along_axis(x.value().data(), from.extent, i, values.back().data(), 1, 0, 1, from.outer, from.inner);
    }
    return record_op<T>("unstack", {x}, std::move(values), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        std::vector<Tensor<T>> gradients;
        for (std::size_t i = 0; i < ctx.num_outputs(); ++i) gradients.push_back(ctx.grad_output_or_zeros(i));
        return {stack(gradients, axis)};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return unstack(ctx.tangent(0), axis); });
}

template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<std::size_t>& sizes, std::size_t axis) {
    const Shape shape = x.shape();
    check_axis("split", shape, axis);
    const std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
    if (sizes.empty() || total != shape[axis])
        throw_shape_error("split",
                          fmt::format("sizes [{}] sum to {}, not to the extent {} of axis {}", fmt::join(sizes, ", "), total,
                                      shape[axis], axis),
                          shape);
    if (sizes.size() == 1) return {x};

    // One node for all pieces: its backward is a single concat rather than one pad per piece.
    const AxisLayout from = layout_around(shape, axis);
    std::vector<xt::xarray<T>> values;
    values.reserve(sizes.size());
    std::size_t offset = 0;
    for (std::size_t size : sizes) {
        Shape part_shape = shape;
        part_shape[axis] = size;
        values.push_back(checked_array<T>("split", part_shape));
        copy_along_axis(x.value().data(), from.extent, offset, values.back().data(), size, 0, size, from.outer, from.inner);
        offset += size;
    }
    return record_op<T>("split", {x}, std::move(values), [axis](const BackwardContext<T>& ctx) -> Gradients<T> {
        std::vector<Tensor<T>> gradients;
        for (std::size_t i = 0; i < ctx.num_outputs(); ++i) gradients.push_back(ctx.grad_output_or_zeros(i));
        return {concat(gradients, axis)};
    }, [axis](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        std::vector<std::size_t> sizes;
        for (std::size_t i = 0; i < ctx.num_outputs(); ++i) sizes.push_back(ctx.output(i).size(axis));
        return split(ctx.tangent(0), sizes, axis);
    });
}

template <class T>
std::vector<Tensor<T>> chunk(const Tensor<T>& x, std::size_t chunks, std::size_t axis) {
    if (chunks == 0) throw std::invalid_argument("chunk: needs at least one chunk");
    check_axis("chunk", x.shape(), axis);
    // As torch.chunk: pieces of ceil(extent / chunks), the last one smaller, so there may be
    // fewer than `chunks` pieces; an empty axis still gives `chunks` empty pieces.
    const std::size_t extent = x.size(axis);
    if (extent == 0) return split(x, std::vector<std::size_t>(chunks, 0), axis);
    const std::size_t piece = (extent + chunks - 1) / chunks;
    std::vector<std::size_t> sizes;
    for (std::size_t begin = 0; begin < extent; begin += piece) sizes.push_back(std::min(piece, extent - begin));
    return split(x, sizes, axis);
}

template <class T>
Tensor<T> index_select(const Tensor<T>& x, std::size_t axis, const std::vector<std::int64_t>& indices) {
    const Shape shape = x.shape();
    check_axis("index_select", shape, axis);
    std::vector<std::size_t> rows;
    rows.reserve(indices.size());
    for (std::int64_t index : indices) {
        if (index < 0 || static_cast<std::size_t>(index) >= shape[axis])
            throw_shape_error("index_select",
                              fmt::format("index {} out of range for axis {} of extent {}", index, axis, shape[axis]), shape);
        rows.push_back(static_cast<std::size_t>(index));
    }
    const AxisLayout from = layout_around(shape, axis);
    Shape result_shape = shape;
    result_shape[axis] = rows.size();
    xt::xarray<T> value = checked_array<T>("index_select", result_shape);
    for (std::size_t j = 0; j < rows.size(); ++j)
        copy_along_axis(x.value().data(), from.extent, rows[j], value.data(), rows.size(), j, 1, from.outer, from.inner);
    auto shared = std::make_shared<const std::vector<std::size_t>>(std::move(rows));  // for both rules
    return record_op<T>("index_select", {x}, std::move(value),
                        [axis, shared, extent = from.extent](const BackwardContext<T>& ctx) -> Gradients<T> {
                            return {index_add(ctx.grad_output(0), axis, *shared, extent)};
                        },
                        [axis, shared](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            return {index_select(ctx.tangent(0), axis, std::vector<std::int64_t>(shared->begin(), shared->end()))};
                        });
}

namespace {

// The adjoint of index_select: zeros with `extent` positions along axis, to which position j of
// `source` is added at indices[j]; repeated indices add up.
template <class T>
Tensor<T> index_add(const Tensor<T>& source, std::size_t axis, const std::vector<std::size_t>& indices,
                    std::size_t extent) {
    Shape shape = source.shape();
    shape[axis] = extent;
    const AxisLayout to = layout_around(shape, axis);
    xt::xarray<T> value = xt::zeros<T>(shape);
    const T* from = source.value().data();
    T* out = value.data();
    const std::size_t count = indices.size();
    for (std::size_t o = 0; o < to.outer; ++o)
        for (std::size_t j = 0; j < count; ++j) {
            const T* run = from + (o * count + j) * to.inner;
            T* target = out + (o * extent + indices[j]) * to.inner;
            for (std::size_t e = 0; e < to.inner; ++e) target[e] += run[e];
        }
    return record_op<T>("index_add", {source}, std::move(value), [axis, indices](const BackwardContext<T>& ctx) -> Gradients<T> {
        std::vector<std::int64_t> signed_indices(indices.begin(), indices.end());
        return {index_select(ctx.grad_output(0), axis, signed_indices)};
    }, [axis, indices, extent](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        return {index_add(ctx.tangent(0), axis, indices, extent)};
    });
}

}  // namespace

#define REWIND_SHAPE_OPS(T)                                                                          \
    template Tensor<T> broadcast_to(const Tensor<T>&, const Shape&);                                 \
    template Tensor<T> sum_to(const Tensor<T>&, const Shape&);                                       \
    template Tensor<T> gemm(const Tensor<T>&, const Tensor<T>&, bool, bool);                         \
    template Tensor<T> matmul(const Tensor<T>&, const Tensor<T>&);                                   \
    template Tensor<T> reshape(const Tensor<T>&, const Shape&);                                      \
    template Tensor<T> squeeze(const Tensor<T>&, std::size_t);                                       \
    template Tensor<T> unsqueeze(const Tensor<T>&, std::size_t);                                     \
    template Tensor<T> transpose(const Tensor<T>&);                                                  \
    template Tensor<T> permute(const Tensor<T>&, const std::vector<std::size_t>&);                   \
    template Tensor<T> slice(const Tensor<T>&, std::size_t, std::size_t, std::size_t);               \
    template Tensor<T> concat(const std::vector<Tensor<T>>&, std::size_t);                           \
    template Tensor<T> stack(const std::vector<Tensor<T>>&, std::size_t);                            \
    template std::vector<Tensor<T>> unstack(const Tensor<T>&, std::size_t);                          \
    template std::vector<Tensor<T>> split(const Tensor<T>&, const std::vector<std::size_t>&, std::size_t); \
    template std::vector<Tensor<T>> chunk(const Tensor<T>&, std::size_t, std::size_t);               \
    template Tensor<T> index_select(const Tensor<T>&, std::size_t, const std::vector<std::int64_t>&);
REWIND_SHAPE_OPS(float)
REWIND_SHAPE_OPS(double)

}  // namespace rw
