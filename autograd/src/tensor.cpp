#include "rewind/autograd/tensor.hpp"

#include <atomic>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/function.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

std::string shape_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a, const Shape& b) {
    throw ShapeError(fmt::format("{}: {} (shapes {} and {})", op, problem, shape_string(a), shape_string(b)));
}

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a) {
    throw ShapeError(fmt::format("{}: {} (shape {})", op, problem, shape_string(a)));
}

// ---- modes ----

namespace {
thread_local bool grad_mode = true;
thread_local bool anomaly_mode = false;
std::atomic<std::uint64_t> next_sequence{0};
}  // namespace

bool grad_mode_enabled() { return grad_mode; }
void set_grad_mode(bool enabled) { grad_mode = enabled; }
bool anomaly_mode_enabled() { return anomaly_mode; }
void set_anomaly_mode(bool enabled) { anomaly_mode = enabled; }

// ---- Tensor ----

template <class T>
Tensor<T>::Tensor(Array value, bool requires_grad) : impl_(std::make_shared<TensorImpl<T>>()) {
    impl_->value = std::move(value);
    impl_->requires_grad = requires_grad;
}

template <class T>
Tensor<T> Tensor<T>::zeros(const Shape& shape, bool requires_grad) {
    return full(shape, T(0), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::ones(const Shape& shape, bool requires_grad) {
    return full(shape, T(1), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::full(const Shape& shape, T fill, bool requires_grad) {
    Array value = Array::from_shape(shape);
    value.fill(fill);
    return Tensor(std::move(value), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::scalar(T value, bool requires_grad) {
    return Tensor(Array(value), requires_grad);
}

template <class T>
const TensorImpl<T>& Tensor<T>::checked() const {
    if (!impl_) throw std::logic_error("rewind: use of an undefined tensor");
    return *impl_;
}

template <class T>
TensorImpl<T>& Tensor<T>::checked() {
    if (!impl_) throw std::logic_error("rewind: use of an undefined tensor");
    return *impl_;
}

template <class T>
const typename Tensor<T>::Array& Tensor<T>::value() const { return checked().value; }

template <class T>
typename Tensor<T>::Array& Tensor<T>::mutable_value() { return checked().value; }

template <class T>
Shape Tensor<T>::shape() const { return to_shape(checked().value.shape()); }

template <class T>
std::size_t Tensor<T>::dim() const { return checked().value.dimension(); }

template <class T>
std::size_t Tensor<T>::size() const { return checked().value.size(); }

template <class T>
std::size_t Tensor<T>::size(std::size_t axis) const {
    const auto& value = checked().value;
    if (axis >= value.dimension())
        throw_shape_error("size", fmt::format("axis {} out of range", axis), shape());
    return value.shape()[axis];
}

template <class T>
T Tensor<T>::item() const {
    const auto& value = checked().value;
    if (value.size() != 1) throw_shape_error("item", "needs a tensor with exactly one element", shape());
    return *value.data();
}

template <class T>
bool Tensor<T>::requires_grad() const { return impl_ && impl_->requires_grad; }

template <class T>
Tensor<T>& Tensor<T>::set_requires_grad(bool requires_grad) {
    if (!is_leaf() && !requires_grad)
        throw GraphError("set_requires_grad(false) on a non-leaf tensor; use detach()");
    checked().requires_grad = requires_grad;
    return *this;
}

template <class T>
bool Tensor<T>::is_leaf() const { return checked().grad_fn == nullptr; }

template <class T>
const std::shared_ptr<Node<T>>& Tensor<T>::grad_fn() const { return checked().grad_fn; }

template <class T>
std::size_t Tensor<T>::output_index() const { return checked().output_index; }

template <class T>
Tensor<T> Tensor<T>::grad() const {
    const auto& impl = checked();
    return impl.grad ? *impl.grad : Tensor();
}

template <class T>
void Tensor<T>::set_grad(Tensor gradient) {
    auto& impl = checked();
    if (gradient.defined() && gradient.shape() != shape())
        throw_shape_error("set_grad", "gradient shape differs from the tensor's", gradient.shape(), shape());
    impl.grad = gradient.defined() ? std::make_unique<Tensor>(std::move(gradient)) : nullptr;
}

template <class T>
void Tensor<T>::zero_grad() { checked().grad.reset(); }

template <class T>
void Tensor<T>::retain_grad() { checked().retains_grad = true; }

template <class T>
Tensor<T> Tensor<T>::detach() const { return Tensor(checked().value, false); }

template <class T>
void Tensor<T>::backward(bool retain_graph, bool create_graph) const {
    rw::backward<T>({*this}, {Tensor()}, {retain_graph, create_graph});
}

template <class T>
void Tensor<T>::backward(const Tensor& seed, bool retain_graph, bool create_graph) const {
    rw::backward<T>({*this}, {seed}, {retain_graph, create_graph});
}

template <class T>
void Tensor<T>::register_hook(GradientHook<T> hook) {
    if (!requires_grad()) throw GraphError("register_hook on a tensor that does not require a gradient");
    checked().hooks.push_back(std::move(hook));
}

template class Tensor<float>;
template class Tensor<double>;

// ---- recording ----

namespace {

template <class T>
void check_finite(const xt::xarray<T>& value, const std::string& op, const char* pass, std::size_t index,
                  const char* what) {
    for (T element : value) {
        if (!std::isfinite(element)) {
            throw AnomalyError(fmt::format("anomaly: op '{}' produced {} in its {} ({} {})", op,
                                           std::isnan(element) ? "NaN" : "Inf", pass, what, index));
        }
    }
}

}  // namespace

template <class T>
void check_backward_anomaly(const Node<T>& node, const Gradients<T>& gradients) {
    for (std::size_t i = 0; i < gradients.size(); ++i)
        if (gradients[i].defined()) check_finite(gradients[i].value(), node.name, "backward", i, "gradient for input");
}

template void check_backward_anomaly(const Node<float>&, const Gradients<float>&);
template void check_backward_anomaly(const Node<double>&, const Gradients<double>&);

template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::vector<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward) {
    if (anomaly_mode_enabled())
        for (std::size_t i = 0; i < output_values.size(); ++i)
            check_finite(output_values[i], name, "forward", i, "output");

    bool needs_grad = false;
    if (grad_mode_enabled())
        for (const auto& input : inputs) needs_grad = needs_grad || input.requires_grad();

    std::vector<Tensor<T>> outputs;
    outputs.reserve(output_values.size());
    if (!needs_grad) {
        for (auto& value : output_values) outputs.emplace_back(std::move(value));
        return outputs;
    }
    auto node = std::make_shared<Node<T>>();
    node->name = std::move(name);
    node->sequence = next_sequence.fetch_add(1, std::memory_order_relaxed);
    node->inputs = std::move(inputs);
    node->backward = std::move(backward);
    node->outputs.reserve(output_values.size());
    node->output_shapes.reserve(output_values.size());
    for (std::size_t i = 0; i < output_values.size(); ++i) {
        auto impl = std::make_shared<TensorImpl<T>>();
        node->output_shapes.push_back(to_shape(output_values[i].shape()));
        impl->value = std::move(output_values[i]);
        impl->requires_grad = true;
        impl->grad_fn = node;
        impl->output_index = i;
        node->outputs.push_back(impl);
        outputs.emplace_back(std::move(impl));
    }
    return outputs;
}

template <class T>
Tensor<T> record_op(std::string name, std::vector<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward) {
    std::vector<xt::xarray<T>> values;
    values.push_back(std::move(output_value));
    return std::move(record_op<T>(std::move(name), std::move(inputs), std::move(values), std::move(backward))[0]);
}

template std::vector<Tensor<float>> record_op(std::string, std::vector<Tensor<float>>, std::vector<xt::xarray<float>>,
                                              BackwardRule<float>);
template std::vector<Tensor<double>> record_op(std::string, std::vector<Tensor<double>>,
                                               std::vector<xt::xarray<double>>, BackwardRule<double>);
template Tensor<float> record_op(std::string, std::vector<Tensor<float>>, xt::xarray<float>, BackwardRule<float>);
template Tensor<double> record_op(std::string, std::vector<Tensor<double>>, xt::xarray<double>, BackwardRule<double>);

// ---- BackwardContext ----

template <class T>
Tensor<T> BackwardContext<T>::grad_output_or_zeros(std::size_t index) const {
    const auto& gradient = grad_outputs_.at(index);
    return gradient.defined() ? gradient : Tensor<T>::zeros(node_.output_shapes.at(index));
}

template <class T>
Tensor<T> BackwardContext<T>::output(std::size_t index) const {
    auto impl = node_.outputs.at(index).lock();
    if (!impl) throw GraphError(fmt::format("backward of op '{}': output {} no longer exists", node_.name, index));
    return Tensor<T>(std::move(impl));
}

template class BackwardContext<float>;
template class BackwardContext<double>;

}  // namespace rw
