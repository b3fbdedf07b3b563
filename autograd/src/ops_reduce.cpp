// Reductions and the softmax family. Each backward sits below its forward.

#include <fmt/format.h>
#include <fmt/ranges.h>
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

}  // namespace

template <class T>
Tensor<T> sum(const Tensor<T>& x) {
    const T total = xt::sum(x.value())();
    return record_op<T>("sum", {x}, xt::xarray<T>(total),
                        [](const BackwardContext<T>& ctx) -> Gradients<T> {
                            return {broadcast_to(ctx.grad_output(0), ctx.input(0).shape())};
                        });
}

template <class T>
Tensor<T> sum(const Tensor<T>& x, const std::vector<std::size_t>& axes, bool keepdims) {
    check_axes("sum", x.shape(), axes);
    xt::xarray<T> value = xt::sum(x.value(), axes, xt::evaluation_strategy::immediate);
    if (keepdims) value.reshape(kept_shape(x.shape(), axes));
    return record_op<T>("sum", {x}, std::move(value), [axes](const BackwardContext<T>& ctx) -> Gradients<T> {
        const Shape shape = ctx.input(0).shape();
        return {broadcast_to(reshape(ctx.grad_output(0), kept_shape(shape, axes)), shape)};
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

template Tensor<float> sum(const Tensor<float>&);
template Tensor<double> sum(const Tensor<double>&);
template Tensor<float> sum(const Tensor<float>&, const std::vector<std::size_t>&, bool);
template Tensor<double> sum(const Tensor<double>&, const std::vector<std::size_t>&, bool);
template Tensor<float> mean(const Tensor<float>&);
template Tensor<double> mean(const Tensor<double>&);
template Tensor<float> mean(const Tensor<float>&, const std::vector<std::size_t>&, bool);
template Tensor<double> mean(const Tensor<double>&, const std::vector<std::size_t>&, bool);

}  // namespace rw
