#include "rewind/autograd/tensor.hpp"

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
    impl_ = std::allocate_shared<Impl>(detail::PoolAllocator<Impl>(), std::move(value), requires_grad);
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
const detail::TensorImpl<T>& Tensor<T>::checked() const {
    if (!impl_) throw std::logic_error("rewind: use of an undefined tensor");
    return *impl_;
}

template <class T>
detail::TensorImpl<T>& Tensor<T>::checked() {
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
bool Tensor<T>::has_tangent() const { return impl_ && impl_->tangent; }

template <class T>
Tensor<T> Tensor<T>::tangent() const {
    const auto& impl = checked();
    return impl.tangent ? *impl.tangent : Tensor();
}

template <class T>
void Tensor<T>::set_tangent(Tensor tangent) {
    auto& impl = checked();
    if (tangent.defined() && tangent.shape() != shape())
        throw_shape_error("set_tangent", "tangent shape differs from the tensor's", tangent.shape(), shape());
    impl.tangent = tangent.defined() ? std::make_unique<Tensor>(std::move(tangent)) : nullptr;
}

template <class T>
void Tensor<T>::clear_tangent() { checked().tangent.reset(); }

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

// Note [Iterative teardown]: a graph owns itself as a chain: TensorImpl -> grad_fn (Node) ->
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
detail::TensorImpl<T>::~TensorImpl() {
    if (grad_fn) release_node(std::move(grad_fn));
    ArrayCache<T>::give(std::move(value));
}

template struct detail::TensorImpl<float>;
template struct detail::TensorImpl<double>;
template class Tensor<float>;
template class Tensor<double>;

}  // namespace rw
