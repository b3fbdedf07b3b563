#pragma once
// A Tensor is a shared handle to a value (an xtensor array) and, when it was produced by a
// recorded op, to the tape node that knows how to send gradients back to the op's inputs.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

namespace rw {

using Shape = std::vector<std::size_t>;

template <class T> class Tensor;
template <class T> class Node;
template <class T>
using GradientHook = std::function<void(const Tensor<T>& gradient)>;

// Engine bookkeeping, not public API: a Tensor's state lives here, and only autograd/src names it
// (as PyTorch's function.h keeps engine state behind accessors). Users go through Tensor.
namespace detail {
template <class T> class BackwardPass;  // the engine (engine.cpp): the only user of the private parts
template <class T> struct TensorAccess;  // wraps a TensorImpl in a Tensor (src/tensor_access.hpp)

template <class T>
struct TensorImpl {
    xt::xarray<T> value;
    std::unique_ptr<Tensor<T>> grad;      // accumulated gradient of a leaf (or retained), may be empty
    std::shared_ptr<Node<T>> grad_fn;     // producer on the tape; empty for leaves
    std::size_t output_index = 0;         // which output of grad_fn this tensor is
    bool requires_grad = false;
    bool retains_grad = false;
    std::vector<GradientHook<T>> hooks;
    // Forward mode: d(this)/d(input direction), a plain tensor of this shape, or empty
    // (Note [One forward level], forward.hpp).
    std::unique_ptr<Tensor<T>> tangent;

    TensorImpl() = default;
    // Moves the value in: a default-constructed xarray is a 0-d array that allocates its element.
    explicit TensorImpl(xt::xarray<T>&& initial, bool needs_grad = false)
        : value(std::move(initial)), requires_grad(needs_grad) {}
    // Hands a small value's storage back for reuse by later ops (see src/pool.hpp).
    ~TensorImpl();

private:
    friend class detail::BackwardPass<T>;
    // Scratch space of one backward pass: the gradient summed so far over this tensor's uses
    // (undefined outside a pass). Held inline: one allocation fewer per tensor and pass.
    Tensor<T> pending;
};

}  // namespace detail

template <class T>
class Tensor {
public:
    using value_type = T;
    using Array = xt::xarray<T>;

    Tensor() = default;  // an undefined tensor: "no gradient" in backward rules
    explicit Tensor(Array value, bool requires_grad = false);

    static Tensor zeros(const Shape& shape, bool requires_grad = false);
    static Tensor ones(const Shape& shape, bool requires_grad = false);
    static Tensor full(const Shape& shape, T fill, bool requires_grad = false);
    static Tensor scalar(T value, bool requires_grad = false);

    bool defined() const { return impl_ != nullptr; }
    const Array& value() const;
    // Direct write access for optimizers and initialisers; not recorded on the tape.
    Array& mutable_value();
    Shape shape() const;
    std::size_t dim() const;
    std::size_t size() const;
    std::size_t size(std::size_t axis) const;
    T item() const;

    bool requires_grad() const;
    Tensor& set_requires_grad(bool requires_grad);
    bool is_leaf() const;
    const std::shared_ptr<Node<T>>& grad_fn() const;
    std::size_t output_index() const;

    // The gradient accumulated by backward(); undefined until a backward reaches this leaf.
    Tensor grad() const;
    void set_grad(Tensor gradient);
    void zero_grad();
    // Non-leaf tensors keep their gradient too after this call (like torch.Tensor.retain_grad).
    void retain_grad();

    // A tensor with the same value, cut off from the tape.
    Tensor detach() const;

    void backward(bool retain_graph = false, bool create_graph = false) const;
    void backward(const Tensor& seed, bool retain_graph = false, bool create_graph = false) const;

    // Forward mode (forward.hpp): the directional derivative this tensor carries, undefined when
    // none. set_tangent checks the shape; detach() drops the tangent too.
    bool has_tangent() const;
    Tensor tangent() const;
    void set_tangent(Tensor tangent);
    void clear_tangent();

    // The hook sees this tensor's total gradient of each backward pass.
    void register_hook(GradientHook<T> hook);

    bool same(const Tensor& other) const { return impl_ == other.impl_; }
    // How many handles share this tensor, the tape's included: 1 once no graph refers to it.
    long use_count() const { return impl_.use_count(); }

private:
    friend class detail::BackwardPass<T>;
    friend struct detail::TensorAccess<T>;
    using Impl = detail::TensorImpl<T>;

    explicit Tensor(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
    const std::shared_ptr<Impl>& impl() const { return impl_; }

    const Impl& checked() const;
    Impl& checked();
    std::shared_ptr<Impl> impl_;
};

// Shapes as "[2, 3]" for error messages.
std::string shape_string(const Shape& shape);
template <class S>
Shape to_shape(const S& shape) { return Shape(shape.begin(), shape.end()); }

extern template class Tensor<float>;
extern template class Tensor<double>;

}  // namespace rw
