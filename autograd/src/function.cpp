// record_op, the backward context and the per-thread modes of function.hpp.

#include "rewind/autograd/function.hpp"

#include <atomic>
#include <cmath>

#include <fmt/format.h>

#include "rewind/autograd/errors.hpp"
#include "pool.hpp"
#include "tensor_access.hpp"

namespace rw {

// ---- modes ----

namespace {
thread_local bool grad_mode = true;
thread_local bool anomaly_mode = false;
thread_local bool forward_mode = true;
std::atomic<std::uint64_t> next_sequence{0};
}  // namespace

bool grad_mode_enabled() { return grad_mode; }
void set_grad_mode(bool enabled) { grad_mode = enabled; }
bool anomaly_mode_enabled() { return anomaly_mode; }
void set_anomaly_mode(bool enabled) { anomaly_mode = enabled; }
bool forward_mode_enabled() { return forward_mode; }
void set_forward_mode(bool enabled) { forward_mode = enabled; }

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
    return detail::TensorAccess<T>::wrap(
        std::allocate_shared<detail::TensorImpl<T>>(detail::PoolAllocator<detail::TensorImpl<T>>(), std::move(value)));
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
        return TensorAccess<T>::wrap(std::move(impl));
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

// Note [One forward level]: tangents are plain tensors. A forward rule runs with grad mode off
// and forward mode suspended, so the ops it calls record nothing and carry no tangents of their
// own: a tangent is never differentiated again (no reverse-over-forward, no jvp of a jvp), and no
// tangent ever holds its own tensor's graph (which would be a reference cycle through
// TensorImpl::tangent). Hessian-vector products go forward-over-reverse instead: backward rules
// are ops, so run on tensors that carry tangents they return gradients that carry them.
template <class T>
bool needs_tangents(const Tensor<T>* begin, const Tensor<T>* end) {
    if (!forward_mode) return false;
    for (const Tensor<T>* input = begin; input != end; ++input)
        if (input->has_tangent()) return true;
    return false;
}

template <class T>
void apply_forward_rule(const std::string& name, const Tensor<T>* inputs, std::size_t num_inputs,
                        const std::vector<Tensor<T>>& outputs, const ForwardRule<T>& forward) {
    if (!forward)
        throw GraphError(fmt::format("op '{}' has no forward-mode (JVP) rule: a tangent reached one of its inputs "
                                     "(pass a ForwardRule to record_op, or keep tangents away from this op)",
                                     name));
    std::vector<Tensor<T>> tangents;
    {
        NoGradGuard no_grad;
        ForwardModeGuard one_level(false);
        tangents = forward(ForwardContext<T>(name, inputs, num_inputs, outputs));
    }
    if (tangents.size() != outputs.size())
        throw GraphError(fmt::format("forward rule of op '{}' returned {} tangents for {} outputs", name,
                                     tangents.size(), outputs.size()));
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (!tangents[i].defined()) continue;
        if (tangents[i].value().shape() != outputs[i].value().shape())
            throw GraphError(fmt::format("forward rule of op '{}' returned a tangent of shape {} for output {} of shape {}",
                                         name, shape_string(tangents[i].shape()), i, shape_string(outputs[i].shape())));
        if (anomaly_mode_enabled()) check_finite(tangents[i].value(), name, "forward-mode rule", i, "tangent");
        Tensor<T> output = outputs[i];
        output.set_tangent(std::move(tangents[i]));
    }
}

template <class T>
std::vector<Tensor<T>> record_many(std::string&& name, std::vector<Tensor<T>>&& inputs,
                                   std::vector<xt::xarray<T>>&& output_values, BackwardRule<T>&& backward) {
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

}  // namespace

template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::vector<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward,
                                 ForwardRule<T> forward) {
    if (anomaly_mode_enabled())
        for (std::size_t i = 0; i < output_values.size(); ++i)
            check_finite(output_values[i], name, "forward", i, "output");
    if (!needs_tangents(inputs.data(), inputs.data() + inputs.size()))
        return record_many(std::move(name), std::move(inputs), std::move(output_values), std::move(backward));
    // The node takes the inputs and the name: the forward rule reads its own handles.
    const std::vector<Tensor<T>> kept = inputs;
    const std::string op = name;
    auto outputs = record_many(std::move(name), std::move(inputs), std::move(output_values), std::move(backward));
    apply_forward_rule(op, kept.data(), kept.size(), outputs, forward);
    return outputs;
}

// Written out rather than through the vector form: a single-output op is the common case and
// skips building the two vectors.
template <class T>
Tensor<T> record_op(std::string name, std::vector<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward, ForwardRule<T> forward) {
    const bool record = should_record(inputs.data(), inputs.data() + inputs.size());
    if (!needs_tangents(inputs.data(), inputs.data() + inputs.size()))
        return record_single(std::move(name), std::move(inputs), record, std::move(output_value), std::move(backward));
    const std::vector<Tensor<T>> kept = inputs;
    const std::string op = name;
    const std::vector<Tensor<T>> outputs{
        record_single(std::move(name), std::move(inputs), record, std::move(output_value), std::move(backward))};
    apply_forward_rule(op, kept.data(), kept.size(), outputs, forward);
    return outputs[0];
}

template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::initializer_list<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward,
                                 ForwardRule<T> forward) {
    // Not recorded and no tangents: the list is not copied at all.
    if (should_record(inputs.begin(), inputs.end()) || needs_tangents(inputs.begin(), inputs.end()))
        return record_op<T>(std::move(name), std::vector<Tensor<T>>(inputs), std::move(output_values),
                            std::move(backward), std::move(forward));
    return record_op<T>(std::move(name), std::vector<Tensor<T>>(), std::move(output_values), std::move(backward));
}

template <class T>
Tensor<T> record_op(std::string name, std::initializer_list<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward, ForwardRule<T> forward) {
    const bool record = should_record(inputs.begin(), inputs.end());
    if (needs_tangents(inputs.begin(), inputs.end()))
        return record_op<T>(std::move(name), std::vector<Tensor<T>>(inputs), std::move(output_value),
                            std::move(backward), std::move(forward));
    std::vector<Tensor<T>> saved;
    if (record) saved.assign(inputs);
    return record_single(std::move(name), std::move(saved), record, std::move(output_value), std::move(backward));
}

template std::vector<Tensor<float>> record_op(std::string, std::vector<Tensor<float>>, std::vector<xt::xarray<float>>,
                                              BackwardRule<float>, ForwardRule<float>);
template std::vector<Tensor<double>> record_op(std::string, std::vector<Tensor<double>>,
                                               std::vector<xt::xarray<double>>, BackwardRule<double>, ForwardRule<double>);
template Tensor<float> record_op(std::string, std::vector<Tensor<float>>, xt::xarray<float>, BackwardRule<float>, ForwardRule<float>);
template Tensor<double> record_op(std::string, std::vector<Tensor<double>>, xt::xarray<double>, BackwardRule<double>, ForwardRule<double>);
template std::vector<Tensor<float>> record_op(std::string, std::initializer_list<Tensor<float>>,
                                              std::vector<xt::xarray<float>>, BackwardRule<float>, ForwardRule<float>);
template std::vector<Tensor<double>> record_op(std::string, std::initializer_list<Tensor<double>>,
                                               std::vector<xt::xarray<double>>, BackwardRule<double>, ForwardRule<double>);
template Tensor<float> record_op(std::string, std::initializer_list<Tensor<float>>, xt::xarray<float>,
                                 BackwardRule<float>, ForwardRule<float>);
template Tensor<double> record_op(std::string, std::initializer_list<Tensor<double>>, xt::xarray<double>,
                                  BackwardRule<double>, ForwardRule<double>);

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
    return detail::TensorAccess<T>::wrap(std::move(impl));
}

template class BackwardContext<float>;
template class BackwardContext<double>;

// ---- ForwardContext ----

template <class T>
const Tensor<T>& ForwardContext<T>::input(std::size_t index) const {
    if (index >= num_inputs_)
        throw std::out_of_range(fmt::format("forward rule of op '{}': input {} of {}", name_, index, num_inputs_));
    return inputs_[index];
}

template <class T>
Tensor<T> ForwardContext<T>::tangent_or_zeros(std::size_t index) const {
    const Tensor<T>& x = input(index);
    return x.has_tangent() ? x.tangent() : Tensor<T>::zeros(x.shape());
}

template class ForwardContext<float>;
template class ForwardContext<double>;

}  // namespace rw
