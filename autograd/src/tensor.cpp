#include "rewind/autograd/tensor.hpp"

#include <atomic>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "rewind/autograd/checked_size.hpp"
#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/function.hpp"
#include "rewind/autograd/ops.hpp"
#include "pool.hpp"

namespace rw {

std::string shape_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a, const Shape& b) {
    throw ShapeError(fmt::format("{}: {} (shapes {} and {})", op, problem, shape_string(a), shape_string(b)));
}

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a) {
    throw ShapeError(fmt::format("{}: {} (shape {})", op, problem, shape_string(a)));
}

void throw_wrong_shape(std::string_view op, std::string_view what, std::string_view expected, const Shape& got) {
    throw ShapeError(fmt::format("{}: {} has the wrong shape: expected {}, got {}", op, what, expected, shape_string(got)));
}

void throw_wrong_shape(std::string_view op, std::string_view what, const Shape& expected, const Shape& got) {
    throw_wrong_shape(op, what, shape_string(expected), got);
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

namespace {

// zeros, ones and full: `op` names the factory in a size error.
template <class T>
Tensor<T> filled(std::string_view op, const Shape& shape, T fill, bool requires_grad) {
    xt::xarray<T> value = checked_array<T>(op, shape);
    value.fill(fill);
    return Tensor<T>(std::move(value), requires_grad);
}

}  // namespace

// A caller's array made with a wrapped-around shape (xtensor multiplies unchecked) holds fewer
// elements than its shape says; it is refused here, before any op reads past its end.
template <class T>
Tensor<T>::Tensor(Array value, bool requires_grad) {
    checked_element_count("Tensor", to_shape(value.shape()), sizeof(T));
    impl_ = std::allocate_shared<TensorImpl<T>>(detail::PoolAllocator<TensorImpl<T>>(), std::move(value), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::zeros(const Shape& shape, bool requires_grad) {
    return filled<T>("zeros", shape, T(0), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::ones(const Shape& shape, bool requires_grad) {
    return filled<T>("ones", shape, T(1), requires_grad);
}

template <class T>
Tensor<T> Tensor<T>::full(const Shape& shape, T fill, bool requires_grad) {
    return filled<T>("full", shape, fill, requires_grad);
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

// Note [iterative teardown]: a graph owns itself as a chain: TensorImpl -> grad_fn (Node) ->
// inputs_ and the rule's saved tensors -> TensorImpl -> ... Freed the plain way, dropping the
// last handle of a T-step output recursed once per op and overflowed the stack (a generic LSTM
// of ~5,000 steps on an 8 MiB stack). As PyTorch's deleteNode (torch/csrc/autograd/function.cpp)
// does, a node whose last reference is going is put on a heap stack instead, and the outermost
// release on this thread frees the stack's nodes in a loop; a node freed there only adds its
// producers' nodes to the stack. Every path that frees a node (a dropped output, backward
// releasing its inputs, saved state in rules, hooks, retained gradients) ends in ~TensorImpl
// dropping grad_fn, so this one place covers them; depth stays a few frames per graph.
namespace detail {

template <class T>
void release_node(std::shared_ptr<Node<T>>&& node) noexcept {
    // Not the last reference: dropping it frees nothing (if another thread drops its own at the
    // same moment, the node is freed in one of the two loops, still without recursion).
    if (node.use_count() != 1) {
        node.reset();
        return;
    }
    // The outermost release's stack; a plain pointer, so nothing is constructed or destroyed
    // per thread (tensors may be freed during thread exit).
    thread_local std::vector<std::shared_ptr<Node<T>>>* pending = nullptr;
    if (pending) {
        pending->push_back(std::move(node));
        return;
    }
    std::vector<std::shared_ptr<Node<T>>> stack;
    pending = &stack;
    node.reset();
    while (!stack.empty()) {
        std::shared_ptr<Node<T>> next = std::move(stack.back());
        stack.pop_back();
        next.reset();
    }
    pending = nullptr;
}

}  // namespace detail

template <class T>
TensorImpl<T>::~TensorImpl() {
    if (grad_fn) detail::release_node(std::move(grad_fn));
    detail::ArrayCache<T>::give(std::move(value));
}

template struct TensorImpl<float>;
template struct TensorImpl<double>;
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
        if (gradients[i].defined()) check_finite(gradients[i].value(), node.name(), "backward", i, "gradient for input");
}

template void check_backward_anomaly(const Node<float>&, const Gradients<float>&);
template void check_backward_anomaly(const Node<double>&, const Gradients<double>&);

namespace {

template <class T>
bool should_record(const Tensor<T>* begin, const Tensor<T>* end) {
    if (!grad_mode_enabled()) return false;
    for (const Tensor<T>* input = begin; input != end; ++input)
        if (input->requires_grad()) return true;
    return false;
}

// A tensor off the tape. (Values are passed by reference from here on: moving an xarray copies
// its three inline shape vectors, which shows on tiny ops.)
template <class T>
Tensor<T> plain_tensor(xt::xarray<T>&& value) {
    return Tensor<T>(std::allocate_shared<TensorImpl<T>>(detail::PoolAllocator<TensorImpl<T>>(), std::move(value)));
}

}  // namespace

template <class T>
struct detail::NodeFactory {
    static std::shared_ptr<Node<T>> make_node(std::string&& name, std::vector<Tensor<T>>&& inputs,
                                              BackwardRule<T>&& backward, std::size_t num_outputs) {
        auto node = std::allocate_shared<Node<T>>(detail::PoolAllocator<Node<T>>());
        node->name_ = std::move(name);
        node->sequence_ = next_sequence.fetch_add(1, std::memory_order_relaxed);
        node->inputs_ = std::move(inputs);
        node->backward_ = std::move(backward);
        node->outputs_.reserve(num_outputs);
        node->output_shapes_.reserve(num_outputs);
        return node;
    }

    static Tensor<T> attach_output(const std::shared_ptr<Node<T>>& node, xt::xarray<T>&& value) {
        node->output_shapes_.push_back(value.shape());
        auto impl = std::allocate_shared<TensorImpl<T>>(detail::PoolAllocator<TensorImpl<T>>(), std::move(value), true);
        impl->grad_fn = node;
        impl->output_index = node->outputs_.size();
        node->outputs_.push_back(impl);
        return Tensor<T>(std::move(impl));
    }
};

namespace {

template <class T>
Tensor<T> record_single(std::string&& name, std::vector<Tensor<T>>&& inputs, bool record, xt::xarray<T>&& value,
                        BackwardRule<T>&& backward) {
    if (anomaly_mode_enabled()) check_finite(value, name, "forward", 0, "output");
    if (!record) return plain_tensor(std::move(value));
    using Factory = detail::NodeFactory<T>;
    return Factory::attach_output(Factory::make_node(std::move(name), std::move(inputs), std::move(backward), 1),
                                  std::move(value));
}

}  // namespace

template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::vector<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward) {
    if (anomaly_mode_enabled())
        for (std::size_t i = 0; i < output_values.size(); ++i)
            check_finite(output_values[i], name, "forward", i, "output");

    std::vector<Tensor<T>> outputs;
    outputs.reserve(output_values.size());
    if (!should_record(inputs.data(), inputs.data() + inputs.size())) {
        for (auto& value : output_values) outputs.push_back(plain_tensor(std::move(value)));
        return outputs;
    }
    using Factory = detail::NodeFactory<T>;
    auto node = Factory::make_node(std::move(name), std::move(inputs), std::move(backward), output_values.size());
    for (auto& value : output_values) outputs.push_back(Factory::attach_output(node, std::move(value)));
    return outputs;
}

// Written out rather than through the vector form: a single-output op is the common case and
// skips building the two vectors.
template <class T>
Tensor<T> record_op(std::string name, std::vector<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward) {
    const bool record = should_record(inputs.data(), inputs.data() + inputs.size());
    return record_single(std::move(name), std::move(inputs), record, std::move(output_value), std::move(backward));
}

template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::initializer_list<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward) {
    std::vector<Tensor<T>> saved;
    if (should_record(inputs.begin(), inputs.end())) saved.assign(inputs);
    // Not recorded: an empty input list records nothing either, so the vector form is reused as is.
    return record_op<T>(std::move(name), std::move(saved), std::move(output_values), std::move(backward));
}

template <class T>
Tensor<T> record_op(std::string name, std::initializer_list<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward) {
    const bool record = should_record(inputs.begin(), inputs.end());
    std::vector<Tensor<T>> saved;
    if (record) saved.assign(inputs);
    return record_single(std::move(name), std::move(saved), record, std::move(output_value), std::move(backward));
}

template std::vector<Tensor<float>> record_op(std::string, std::vector<Tensor<float>>, std::vector<xt::xarray<float>>,
                                              BackwardRule<float>);
template std::vector<Tensor<double>> record_op(std::string, std::vector<Tensor<double>>,
                                               std::vector<xt::xarray<double>>, BackwardRule<double>);
template Tensor<float> record_op(std::string, std::vector<Tensor<float>>, xt::xarray<float>, BackwardRule<float>);
template Tensor<double> record_op(std::string, std::vector<Tensor<double>>, xt::xarray<double>, BackwardRule<double>);
template std::vector<Tensor<float>> record_op(std::string, std::initializer_list<Tensor<float>>,
                                              std::vector<xt::xarray<float>>, BackwardRule<float>);
template std::vector<Tensor<double>> record_op(std::string, std::initializer_list<Tensor<double>>,
                                               std::vector<xt::xarray<double>>, BackwardRule<double>);
template Tensor<float> record_op(std::string, std::initializer_list<Tensor<float>>, xt::xarray<float>,
                                 BackwardRule<float>);
template Tensor<double> record_op(std::string, std::initializer_list<Tensor<double>>, xt::xarray<double>,
                                  BackwardRule<double>);

// ---- BackwardContext ----

template <class T>
Tensor<T> BackwardContext<T>::grad_output_or_zeros(std::size_t index) const {
    const auto& gradient = grad_outputs_.at(index);
    return gradient.defined() ? gradient : Tensor<T>::zeros(to_shape(node_.output_shapes_.at(index)));
}

template <class T>
Tensor<T> BackwardContext<T>::output(std::size_t index) const {
    auto impl = node_.outputs_.at(index).lock();
    if (!impl) throw GraphError(fmt::format("backward of op '{}': output {} no longer exists", node_.name_, index));
    return Tensor<T>(std::move(impl));
}

template class BackwardContext<float>;
template class BackwardContext<double>;

}  // namespace rw
