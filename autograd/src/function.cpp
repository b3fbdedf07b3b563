// record_op, the backward context and the per-thread modes of function.hpp.

#include "rewind/autograd/function.hpp"

#include <atomic>
#include <cmath>

#include <fmt/format.h>

#include "rewind/autograd/errors.hpp"
#include "pool.hpp"

namespace rw {

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
