#pragma once
// Optimizers over a module's named parameters with PyTorch's exact update formulas
// (torch.optim.SGD, Adam, AdamW with one parameter group, foreach=False).
//
// A step never writes NaN or Inf into a weight: all updates are computed first and committed
// only when every gradient and every new value is finite. Otherwise the step either throws
// NonFiniteError naming the parameter (the default) or, with NonFinitePolicy::skip, changes
// nothing and reports which parameter it skipped for. Parameters without a gradient are left
// alone (and, as in PyTorch, their step count does not advance).
//
// state() / load_state() export and import everything a resumed run needs: the learning rate,
// the hyperparameters, each parameter's step count and its buffers (momentum_buffer, exp_avg,
// exp_avg_sq), so a checkpoint (checkpoint.hpp) resumes bit for bit.

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "rewind/nn/module.hpp"
#include "rewind/nn/io/safetensors.hpp"

namespace rw::nn {

enum class NonFinitePolicy { raise, skip };

// A gradient (or a gradient norm, or an update) that is NaN or Inf.
struct NonFiniteError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct StepReport {
    bool applied = true;
    std::string skipped_parameter;  // with NonFinitePolicy::skip: the parameter that was not finite
};

// An optimizer's state as tensors "<parameter>.<buffer>" and "<parameter>.step" (I64 [1]),
// and scalars as exact decimal text ("kind", "lr", hyperparameters).
struct OptimizerState {
    TensorMap tensors;
    std::map<std::string, std::string> scalars;
};

// The learning rate, as schedulers see it whatever the element type.
class LearningRate {
public:
    virtual ~LearningRate() = default;
    virtual double lr() const = 0;
    virtual void set_lr(double lr) = 0;
};

template <class T>
class Optimizer : public LearningRate {
public:
    Optimizer(NamedTensors<T> parameters, double lr, NonFinitePolicy policy);

    StepReport step();
    void zero_grad();

    double lr() const override { return lr_; }
    void set_lr(double lr) override;
    const NamedTensors<T>& parameters() const { return parameters_; }
    std::size_t skipped_steps() const { return skipped_steps_; }
    // The number of updates parameter `index` has received.
    std::int64_t step_count(std::size_t index) const { return states_.at(index).step; }
    virtual std::string kind() const = 0;

    OptimizerState state() const;
    // Throws SafetensorsError naming `source` and the entry on any mismatch (kind, parameter
    // names, shapes, dtypes, missing or unexpected entries, unparsable numbers).
    void validate_state(const OptimizerState& state, const std::string& source) const;
    // Validates everything first: on failure the optimizer is unchanged.
    void load_state(const OptimizerState& state, const std::string& source);

protected:
    struct ParameterState {
        std::int64_t step = 0;  // 0: no update yet, buffers empty
        std::map<std::string, xt::xarray<T>> buffers;
    };
    // Returns the new value of one parameter and updates its state (a copy, committed by step()).
    virtual xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad, ParameterState& state) const = 0;
    virtual std::vector<std::string> buffer_names() const = 0;
    virtual std::map<std::string, double> hyperparameters() const = 0;
    // values has every key of hyperparameters(); check throws std::invalid_argument.
    virtual void check_hyperparameters(const std::map<std::string, double>& values) const = 0;
    virtual void set_hyperparameters(const std::map<std::string, double>& values) = 0;

private:
    struct Staged;
    Staged parse_state(const OptimizerState& state, const std::string& source) const;

    NamedTensors<T> parameters_;
    std::vector<ParameterState> states_;
    double lr_;
    NonFinitePolicy policy_;
    std::size_t skipped_steps_ = 0;
};

struct SGDOptions {
    double lr = 0.01;
    double momentum = 0.0;
    double dampening = 0.0;
    bool nesterov = false;
    double weight_decay = 0.0;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// d = g + wd p;  b = d (first step) or momentum b + (1 - dampening) d;
// d = d + momentum b (Nesterov) or b;  p = p - lr d.
template <class T>
class SGD : public Optimizer<T> {
public:
    SGD(NamedTensors<T> parameters, const SGDOptions& options);
    std::string kind() const override { return "sgd"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::vector<std::string> buffer_names() const override;
    std::map<std::string, double> hyperparameters() const override;
    void check_hyperparameters(const std::map<std::string, double>& values) const override { options_from(values); }
    void set_hyperparameters(const std::map<std::string, double>& values) override { options_ = options_from(values); }

private:
    SGDOptions options_from(const std::map<std::string, double>& values) const;
    SGDOptions options_;
};

struct AdamOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;  // Adam: L2 added to the gradient; AdamW: decoupled, p -= lr wd p
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// step += 1;  g = g + wd p (Adam only);  p = p (1 - lr wd) (AdamW only);
// m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
// p = p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
template <class T>
class Adam : public Optimizer<T> {
public:
    Adam(NamedTensors<T> parameters, const AdamOptions& options, bool decoupled_weight_decay = false);
    std::string kind() const override { return decoupled_ ? "adamw" : "adam"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }
    std::map<std::string, double> hyperparameters() const override;
    void check_hyperparameters(const std::map<std::string, double>& values) const override { options_from(values); }
    void set_hyperparameters(const std::map<std::string, double>& values) override { options_ = options_from(values); }

private:
    AdamOptions options_from(const std::map<std::string, double>& values) const;
    AdamOptions options_;
    bool decoupled_;
};

// AdamW's options differ only in PyTorch's default weight decay.
struct AdamWOptions : AdamOptions {
    AdamWOptions() { weight_decay = 1e-2; }
};

template <class T>
class AdamW : public Adam<T> {
public:
    AdamW(NamedTensors<T> parameters, const AdamWOptions& options) : Adam<T>(std::move(parameters), options, true) {}
};

// Exact decimal text for a double (shortest round-trip form) and its strict parse.
std::string format_exact(double value);
std::optional<double> parse_exact(const std::string& text);

extern template class Optimizer<float>;
extern template class Optimizer<double>;
extern template class SGD<float>;
extern template class SGD<double>;
extern template class Adam<float>;
extern template class Adam<double>;

}  // namespace rw::nn
