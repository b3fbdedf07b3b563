#pragma once
// Optimizers over a module's named parameters with PyTorch's exact update formulas
// (torch.optim as of 1.13, one parameter group, foreach=False): SGD, Adam, AdamW here; RMSprop,
// Adagrad, Adadelta, Adamax, NAdam, RAdam in optimizers.hpp.
//
// A step never writes NaN or Inf into a weight: all updates are computed first and committed
// only when every gradient and every new value is finite. Otherwise the step either throws
// NonFiniteError naming the parameter (the default) or, with NonFinitePolicy::skip, changes
// nothing and reports which parameter it skipped for. Parameters without a gradient are left
// alone (and, as in PyTorch, their step count does not advance).
//
// After the update, and before the commit, each parameter's constraints project it (constrain(),
// constraint.hpp): IndRNN's |u| <= 2^(1/T), max-norm rows, non-negativity. Projections change
// values only, never the tape or a gradient.
//
// state() / load_state() export and import everything a resumed run needs: the learning rate,
// the hyperparameters, each parameter's step count and its buffers (momentum_buffer, exp_avg,
// ...), so a checkpoint (checkpoint.hpp) resumes bit for bit. Note [writing an optimizer]: a
// subclass writes kind() and update(), and registers its hyperparameters with hyperparameter()
// in its constructor; the base then checks them (named error, expected vs got), saves, validates
// and restores them and every buffer update() created, with no checkpoint code of its own.

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <xtensor/xarray.hpp>

#include "rewind/nn/module.hpp"
#include "rewind/nn/io/safetensors.hpp"
#include "rewind/nn/train/constraint.hpp"

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
// and scalars as exact decimal text ("kind", "lr", "hyper.<name>", "state.<parameter>.<name>").
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

// The values a hyperparameter may take (besides being finite), e.g. Allowed::at_least(0) or
// Allowed::between(0, 1, Allowed::open_high) for a decay rate below 1.
struct Allowed {
    double low = -std::numeric_limits<double>::infinity();
    double high = std::numeric_limits<double>::infinity();
    bool low_open = false, high_open = false;

    static constexpr bool open_high = true;
    static Allowed any() { return {}; }
    static Allowed at_least(double low) { return {.low = low}; }
    static Allowed between(double low, double high, bool high_open = false) {
        return {.low = low, .high = high, .high_open = high_open};
    }
    bool allows(double value) const;
    std::string describe() const;  // "in [0, 1)", ">= 0"
};

template <class T>
class Optimizer : public LearningRate {
public:
    Optimizer(NamedTensors<T> parameters, double lr, NonFinitePolicy policy = NonFinitePolicy::raise);
    // Registered hyperparameters point into the optimizer: it is neither copied nor moved.
    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;

    StepReport step();
    void zero_grad();

    double lr() const override { return lr_; }
    void set_lr(double lr) override;
    const NamedTensors<T>& parameters() const { return parameters_; }
    std::size_t skipped_steps() const { return skipped_steps_; }
    // The number of updates parameter `index` has received.
    std::int64_t step_count(std::size_t index) const { return states_.at(index).step; }
    virtual std::string kind() const = 0;

    // After every update of a parameter whose name matches `pattern` ('*' matches any run of
    // characters: "*weight_hh*", "head.weight"), its new value is projected by `projection`
    // (constraint.hpp). A pattern that matches no parameter is refused with std::invalid_argument
    // listing the names. Several constraints on one parameter apply in the order given.
    void constrain(const std::string& pattern, Projection<T> projection);
    // Projects every constrained parameter now, e.g. the initial weights before training.
    void apply_constraints();

    // Every hyperparameter by name (booleans as 0 or 1).
    std::map<std::string, double> hyperparameters() const;

    OptimizerState state() const;
    // Throws SafetensorsError naming `source` and the entry on any mismatch (kind, parameter
    // names, shapes, dtypes, missing or unexpected entries, unparsable numbers).
    void validate_state(const OptimizerState& state, const std::string& source) const;
    // Validates everything first: on failure the optimizer is unchanged.
    void load_state(const OptimizerState& state, const std::string& source);

protected:
    struct ParameterState {
        std::int64_t step = 0;  // incremented before update(): 1 on the first update
        std::map<std::string, xt::xarray<T>> buffers;  // each of the parameter's shape
        std::map<std::string, double> scalars;         // per-parameter numbers (NAdam's mu_product)

        // The buffer of that name, created filled with `fill` at its first use.
        xt::xarray<T>& buffer(const std::string& name, const xt::xarray<T>& like, T fill = T(0));
        double& scalar(const std::string& name, double initial);
    };
    // Returns the new value of one parameter and updates its state (a copy, committed by step()).
    virtual xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad, ParameterState& state) const = 0;

    // Registers a hyperparameter (a member of the subclass) under its PyTorch name; checks its
    // value now, throwing std::invalid_argument "<kind>: invalid option <name>: expected ..., got ...".
    void hyperparameter(const std::string& name, double& value, Allowed allowed = Allowed::at_least(0));
    void hyperparameter(const std::string& name, bool& value);

    // Optional: the buffers an updated parameter's saved state holds, exactly, under the
    // hyperparameters `values` about to be loaded (by default any buffer of the parameter's shape
    // is taken back), and checks across hyperparameters (std::invalid_argument), which the
    // subclass's constructor calls and every load runs with the values about to be set.
    virtual std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>& /*values*/) const {
        return std::nullopt;
    }
    virtual void check_together(const std::map<std::string, double>& /*values*/) const {}

private:
    struct Registered {
        std::variant<double*, bool*> target;
        Allowed allowed;
    };
    struct Staged;
    struct Constraint {
        std::string pattern;
        Projection<T> projection;
        std::vector<bool> applies;  // per parameter
    };
    Staged parse_state(const OptimizerState& state, const std::string& source) const;
    void check_values(const std::map<std::string, double>& values) const;
    void project(std::size_t index, xt::xarray<T>& value) const;

    NamedTensors<T> parameters_;
    std::vector<ParameterState> states_;
    std::vector<std::pair<std::string, Registered>> registered_;
    std::vector<Constraint> constraints_;
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
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>& values) const override;
    void check_together(const std::map<std::string, double>& values) const override;

private:
    SGDOptions o_;
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
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"exp_avg", "exp_avg_sq"};
    }

private:
    AdamOptions o_;
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

#include "rewind/nn/train/optimizers.hpp"
