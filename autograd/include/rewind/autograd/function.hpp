#pragma once
// The one way to put an op on the tape, used by the built-in ops and open to users.
//
// An op computes its output values itself, then calls record_op() with its inputs, those
// values, its backward rule and (for forward mode, forward.hpp) its forward rule. The rule receives a BackwardContext (gradients of all outputs,
// some possibly undefined; the inputs and outputs as tensors) and returns one gradient per
// input (undefined where there is none). Rules written with differentiable ops support
// create_graph, so gradients of gradients come for free.

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace rw {

template <class T>
class BackwardContext;
template <class T>
class ForwardContext;

namespace detail {
template <class T> class BackwardPass;  // the engine (engine.cpp)
template <class T> struct NodeFactory;  // record_op's node construction (tensor.cpp)
}  // namespace detail

template <class T>
using Gradients = std::vector<Tensor<T>>;

template <class T>
using BackwardRule = std::function<Gradients<T>(const BackwardContext<T>&)>;

// The forward-mode (JVP) rule: one tangent per output (undefined for a zero tangent) from the
// inputs' tangents. It runs with grad mode off and forward mode suspended, so its ops record
// nothing and carry no tangents (Note [One forward level], forward.hpp).
template <class T>
using ForwardRule = std::function<std::vector<Tensor<T>>(const ForwardContext<T>&)>;

// One recorded op on the tape (Tensor::grad_fn()). Users look at it through the read-only
// accessors; only record_op and the engine change it (as PyTorch's function.h keeps a Node's
// bookkeeping behind accessors).
template <class T>
class Node {
public:
    const std::string& name() const { return name_; }
    // Position on the tape: inputs always precede their consumers.
    std::uint64_t sequence() const { return sequence_; }
    // The op's inputs; empty once a backward without retain_graph released the node.
    const std::vector<Tensor<T>>& inputs() const { return inputs_; }
    std::size_t num_outputs() const { return outputs_.size(); }
    // Saved state dropped after a backward without retain_graph.
    bool released() const { return released_; }

private:
    friend class detail::BackwardPass<T>;
    friend struct detail::NodeFactory<T>;
    friend class BackwardContext<T>;

    std::string name_;
    std::uint64_t sequence_ = 0;
    std::vector<Tensor<T>> inputs_;
    std::vector<std::weak_ptr<detail::TensorImpl<T>>> outputs_;
    // Needed when an output died before the backward; xtensor's small inline shape, no allocation.
    std::vector<typename xt::xarray<T>::shape_type> output_shapes_;
    BackwardRule<T> backward_;
    bool released_ = false;
    std::uint64_t visited_by_ = 0;  // the last backward pass that collected this node
};

template <class T>
class BackwardContext {
public:
    BackwardContext(const Node<T>& node, const std::vector<Tensor<T>>& grad_outputs, bool create_graph)
        : node_(node), grad_outputs_(grad_outputs), create_graph_(create_graph) {}

    std::size_t num_inputs() const { return node_.inputs_.size(); }
    std::size_t num_outputs() const { return node_.outputs_.size(); }
    // Undefined when no gradient reached that output.
    const Tensor<T>& grad_output(std::size_t index) const { return grad_outputs_.at(index); }
    bool has_grad_output(std::size_t index) const { return grad_outputs_.at(index).defined(); }
    // The gradient of an output, or zeros of its shape when none reached it.
    Tensor<T> grad_output_or_zeros(std::size_t index) const;
    const Tensor<T>& input(std::size_t index) const { return node_.inputs_.at(index); }
    // An output as a tensor still attached to this node, so a rule that uses it stays differentiable.
    Tensor<T> output(std::size_t index) const;
    bool needs_input_grad(std::size_t index) const { return node_.inputs_.at(index).requires_grad(); }
    bool create_graph() const { return create_graph_; }
    const std::string& op_name() const { return node_.name_; }

private:
    const Node<T>& node_;
    const std::vector<Tensor<T>>& grad_outputs_;
    bool create_graph_;
};

// What a forward rule sees: the op's inputs with their tangents, and its outputs.
template <class T>
class ForwardContext {
public:
    ForwardContext(const std::string& name, const Tensor<T>* inputs, std::size_t num_inputs,
                   const std::vector<Tensor<T>>& outputs)
        : name_(name), inputs_(inputs), num_inputs_(num_inputs), outputs_(outputs) {}

    std::size_t num_inputs() const { return num_inputs_; }
    const Tensor<T>& input(std::size_t index) const;
    bool has_tangent(std::size_t index) const { return input(index).has_tangent(); }
    // Undefined when the input carries none (a zero tangent).
    Tensor<T> tangent(std::size_t index) const { return input(index).tangent(); }
    Tensor<T> tangent_or_zeros(std::size_t index) const;
    std::size_t num_outputs() const { return outputs_.size(); }
    const Tensor<T>& output(std::size_t index) const { return outputs_.at(index); }
    const std::string& op_name() const { return name_; }

private:
    const std::string& name_;
    const Tensor<T>* inputs_;
    std::size_t num_inputs_;
    const std::vector<Tensor<T>>& outputs_;
};

// Records an op with several outputs. When grad mode is off or no input requires a gradient,
// nothing is recorded and the outputs are plain tensors. When forward mode is on and an input
// carries a tangent, `forward` gives the outputs theirs, recorded or not; an op without one then
// throws GraphError naming it.
template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::vector<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward,
                                 ForwardRule<T> forward = nullptr);

// The single-output form.
template <class T>
Tensor<T> record_op(std::string name, std::vector<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward, ForwardRule<T> forward = nullptr);

// The same with the inputs as a braced list (`{a, b}`): the list is copied into the node only
// when the op is recorded, so ops under NoGradGuard (and inside backward rules) build no vector.
template <class T>
std::vector<Tensor<T>> record_op(std::string name, std::initializer_list<Tensor<T>> inputs,
                                 std::vector<xt::xarray<T>> output_values, BackwardRule<T> backward,
                                 ForwardRule<T> forward = nullptr);
template <class T>
Tensor<T> record_op(std::string name, std::initializer_list<Tensor<T>> inputs, xt::xarray<T> output_value,
                    BackwardRule<T> backward, ForwardRule<T> forward = nullptr);

// ---- grad mode and anomaly mode (per thread) ----

bool grad_mode_enabled();
void set_grad_mode(bool enabled);
bool anomaly_mode_enabled();
void set_anomaly_mode(bool enabled);
// Forward mode (forward.hpp) is on unless suspended; forward rules run with it suspended.
bool forward_mode_enabled();
void set_forward_mode(bool enabled);

// Nothing is recorded while a NoGradGuard lives.
class NoGradGuard {
public:
    NoGradGuard() : previous_(grad_mode_enabled()) { set_grad_mode(false); }
    ~NoGradGuard() { set_grad_mode(previous_); }
    NoGradGuard(const NoGradGuard&) = delete;
    NoGradGuard& operator=(const NoGradGuard&) = delete;
private:
    bool previous_;
};

class EnableGradGuard {
public:
    explicit EnableGradGuard(bool enabled) : previous_(grad_mode_enabled()) { set_grad_mode(enabled); }
    ~EnableGradGuard() { set_grad_mode(previous_); }
    EnableGradGuard(const EnableGradGuard&) = delete;
    EnableGradGuard& operator=(const EnableGradGuard&) = delete;
private:
    bool previous_;
};

class ForwardModeGuard {
public:
    explicit ForwardModeGuard(bool enabled) : previous_(forward_mode_enabled()) { set_forward_mode(enabled); }
    ~ForwardModeGuard() { set_forward_mode(previous_); }
    ForwardModeGuard(const ForwardModeGuard&) = delete;
    ForwardModeGuard& operator=(const ForwardModeGuard&) = delete;
private:
    bool previous_;
};

// While an AnomalyGuard lives, the first op whose forward or backward yields NaN or Inf throws
// AnomalyError naming the op and the pass.
class AnomalyGuard {
public:
    AnomalyGuard() : previous_(anomaly_mode_enabled()) { set_anomaly_mode(true); }
    ~AnomalyGuard() { set_anomaly_mode(previous_); }
    AnomalyGuard(const AnomalyGuard&) = delete;
    AnomalyGuard& operator=(const AnomalyGuard&) = delete;
private:
    bool previous_;
};

extern template std::vector<Tensor<float>> record_op(std::string, std::vector<Tensor<float>>,
    std::vector<xt::xarray<float>>, BackwardRule<float>, ForwardRule<float>);
extern template std::vector<Tensor<double>> record_op(std::string, std::vector<Tensor<double>>,
    std::vector<xt::xarray<double>>, BackwardRule<double>, ForwardRule<double>);
extern template Tensor<float> record_op(std::string, std::vector<Tensor<float>>, xt::xarray<float>,
    BackwardRule<float>, ForwardRule<float>);
extern template Tensor<double> record_op(std::string, std::vector<Tensor<double>>, xt::xarray<double>,
    BackwardRule<double>, ForwardRule<double>);
extern template std::vector<Tensor<float>> record_op(std::string, std::initializer_list<Tensor<float>>,
    std::vector<xt::xarray<float>>, BackwardRule<float>, ForwardRule<float>);
extern template std::vector<Tensor<double>> record_op(std::string, std::initializer_list<Tensor<double>>,
    std::vector<xt::xarray<double>>, BackwardRule<double>, ForwardRule<double>);
extern template Tensor<float> record_op(std::string, std::initializer_list<Tensor<float>>, xt::xarray<float>,
    BackwardRule<float>, ForwardRule<float>);
extern template Tensor<double> record_op(std::string, std::initializer_list<Tensor<double>>, xt::xarray<double>,
    BackwardRule<double>, ForwardRule<double>);
extern template class BackwardContext<float>;
extern template class BackwardContext<double>;
extern template class ForwardContext<float>;
extern template class ForwardContext<double>;

}  // namespace rw
