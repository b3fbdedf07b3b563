#include "rewind/nn/train/optim.hpp"

#include <charconv>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <xtensor/xmath.hpp>

namespace rw::nn {

std::string format_exact(double value) { return fmt::format("{}", value); }

std::optional<double> parse_exact(const std::string& text) {
    double value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
    return value;
}

namespace {

template <class T>
bool all_finite(const xt::xarray<T>& values) {
    for (const T v : values)
        if (!std::isfinite(v)) return false;
    return true;
}

void check_lr(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr)) throw std::invalid_argument(fmt::format("optimizer: invalid learning rate {}", lr));
}

[[noreturn]] void reject(const std::string& source, const std::string& what) {
    throw SafetensorsError(fmt::format("{}: optimizer state: {}", source, what));
}

}  // namespace

template <class T>
Optimizer<T>::Optimizer(NamedTensors<T> parameters, double lr, NonFinitePolicy policy)
    : parameters_(std::move(parameters)), states_(parameters_.size()), lr_(lr), policy_(policy) {
    check_lr(lr);
    for (std::size_t i = 0; i < parameters_.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (parameters_[i].first == parameters_[j].first)
                throw std::invalid_argument("optimizer: parameter '" + parameters_[i].first + "' given twice");
}

template <class T>
void Optimizer<T>::set_lr(double lr) {
    check_lr(lr);
    lr_ = lr;
}

template <class T>
void Optimizer<T>::zero_grad() {
    for (auto& named : parameters_) named.second.zero_grad();
}

template <class T>
StepReport Optimizer<T>::step() {
    // Everything is computed on copies first, so a non-finite value anywhere leaves all
    // weights and buffers as they were.
    std::vector<std::optional<ParameterState>> next(parameters_.size());
    std::vector<xt::xarray<T>> values(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        const auto& [name, parameter] = parameters_[i];
        const Tensor<T> grad = parameter.grad();
        if (!grad.defined()) continue;
        if (grad.shape() != parameter.shape())
            throw std::logic_error(fmt::format("{}: gradient of '{}' has shape {}, the parameter {}", kind(), name,
                                               shape_string(grad.shape()), shape_string(parameter.shape())));
        const char* problem = nullptr;
        if (!all_finite(grad.value())) {
            problem = "gradient";
        } else {
            next[i] = states_[i];
            ++next[i]->step;
            values[i] = update(parameter.value(), grad.value(), *next[i]);
            if (!all_finite(values[i])) problem = "updated value";
        }
        if (problem) {
            if (policy_ == NonFinitePolicy::raise)
                throw NonFiniteError(fmt::format("{}: the {} of parameter '{}' holds NaN or Inf; no weight was changed",
                                                 kind(), problem, name));
            ++skipped_steps_;
            return {false, name};
        }
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i)
        if (next[i]) {
            states_[i] = std::move(*next[i]);
            parameters_[i].second.mutable_value() = std::move(values[i]);
        }
    return {};
}

// ---- state ----

template <class T>
struct Optimizer<T>::Staged {
    double lr = 0;
    std::map<std::string, double> hyperparameters;
    std::vector<ParameterState> states;
};

template <class T>
OptimizerState Optimizer<T>::state() const {
    OptimizerState out;
    out.scalars["kind"] = kind();
    out.scalars["lr"] = format_exact(lr_);
    for (const auto& [key, value] : hyperparameters()) out.scalars["hyper." + key] = format_exact(value);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        const auto& state = states_[i];
        if (state.step == 0) continue;
        const std::string& name = parameters_[i].first;
        out.tensors[name + ".step"] = xt::xarray<std::int64_t>({state.step});
        for (const auto& [buffer, value] : state.buffers) out.tensors[name + "." + buffer] = value;
    }
    return out;
}

template <class T>
typename Optimizer<T>::Staged Optimizer<T>::parse_state(const OptimizerState& state, const std::string& source) const {
    auto scalar = [&](const std::string& key) {
        auto found = state.scalars.find(key);
        if (found == state.scalars.end()) reject(source, fmt::format("'{}' is missing", key));
        return found->second;
    };
    auto number = [&](const std::string& key) {
        const auto value = parse_exact(scalar(key));
        if (!value) reject(source, fmt::format("'{}' is not a number: '{}'", key, scalar(key)));
        return *value;
    };
    if (scalar("kind") != kind()) reject(source, fmt::format("saved by '{}', loading into '{}'", scalar("kind"), kind()));
    Staged staged;
    staged.lr = number("lr");
    if (!(staged.lr >= 0) || !std::isfinite(staged.lr)) reject(source, fmt::format("invalid lr {}", staged.lr));
    std::set<std::string> expected{"kind", "lr"};
    for (const auto& entry : hyperparameters()) {
        staged.hyperparameters[entry.first] = number("hyper." + entry.first);
        expected.insert("hyper." + entry.first);
    }
    for (const auto& entry : state.scalars)
        if (!expected.count(entry.first)) reject(source, fmt::format("unexpected entry '{}'", entry.first));
    try {
        check_hyperparameters(staged.hyperparameters);
    } catch (const std::invalid_argument& error) {
        reject(source, error.what());
    }

    expected.clear();
    staged.states.resize(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        const auto& [name, parameter] = parameters_[i];
        auto step = state.tensors.find(name + ".step");
        if (step == state.tensors.end()) continue;  // never updated: no buffers either
        const auto* count = std::get_if<xt::xarray<std::int64_t>>(&step->second);
        if (!count || count->size() != 1 || (*count)(0) < 1)
            reject(source, fmt::format("tensor '{}.step' must be one positive I64", name));
        staged.states[i].step = (*count)(0);
        expected.insert(name + ".step");
        for (const auto& buffer : buffer_names()) {
            const std::string key = name + "." + buffer;
            auto found = state.tensors.find(key);
            if (found == state.tensors.end()) reject(source, fmt::format("tensor '{}' is missing", key));
            if (shape_of(found->second) != parameter.shape())
                reject(source, fmt::format("tensor '{}' has shape {}, the parameter {}", key,
                                           shape_string(shape_of(found->second)), shape_string(parameter.shape())));
            auto& target = staged.states[i].buffers[buffer];
            if (const auto* f = std::get_if<xt::xarray<float>>(&found->second)) target = xt::cast<T>(*f);
            else if (const auto* d = std::get_if<xt::xarray<double>>(&found->second)) target = xt::cast<T>(*d);
            else reject(source, fmt::format("tensor '{}' has dtype {}, expected F32 or F64", key, dtype_name(found->second)));
            expected.insert(key);
        }
    }
    for (const auto& entry : state.tensors)
        if (!expected.count(entry.first)) reject(source, fmt::format("unexpected tensor '{}'", entry.first));
    return staged;
}

template <class T>
void Optimizer<T>::validate_state(const OptimizerState& state, const std::string& source) const {
    parse_state(state, source);
}

template <class T>
void Optimizer<T>::load_state(const OptimizerState& state, const std::string& source) {
    Staged staged = parse_state(state, source);
    set_hyperparameters(staged.hyperparameters);
    lr_ = staged.lr;
    states_ = std::move(staged.states);
}

// ---- SGD ----

namespace {

SGDOptions checked(SGDOptions options) {
    check_lr(options.lr);
    if (!(options.momentum >= 0)) throw std::invalid_argument(fmt::format("sgd: invalid momentum {}", options.momentum));
    if (!(options.weight_decay >= 0))
        throw std::invalid_argument(fmt::format("sgd: invalid weight decay {}", options.weight_decay));
    if (options.nesterov && (options.momentum <= 0 || options.dampening != 0))
        throw std::invalid_argument("sgd: Nesterov momentum requires a momentum and zero dampening");
    return options;
}

AdamOptions checked(AdamOptions options) {
    check_lr(options.lr);
    if (!(options.eps >= 0)) throw std::invalid_argument(fmt::format("adam: invalid epsilon {}", options.eps));
    if (!(options.beta1 >= 0 && options.beta1 < 1)) throw std::invalid_argument(fmt::format("adam: invalid beta1 {}", options.beta1));
    if (!(options.beta2 >= 0 && options.beta2 < 1)) throw std::invalid_argument(fmt::format("adam: invalid beta2 {}", options.beta2));
    if (!(options.weight_decay >= 0))
        throw std::invalid_argument(fmt::format("adam: invalid weight decay {}", options.weight_decay));
    return options;
}

}  // namespace

template <class T>
SGD<T>::SGD(NamedTensors<T> parameters, const SGDOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), options_(checked(options)) {}

template <class T>
std::vector<std::string> SGD<T>::buffer_names() const {
    if (options_.momentum == 0) return {};
    return {"momentum_buffer"};
}

template <class T>
std::map<std::string, double> SGD<T>::hyperparameters() const {
    return {{"momentum", options_.momentum},
            {"dampening", options_.dampening},
            {"nesterov", options_.nesterov ? 1.0 : 0.0},
            {"weight_decay", options_.weight_decay}};
}

template <class T>
SGDOptions SGD<T>::options_from(const std::map<std::string, double>& values) const {
    SGDOptions options = options_;
    options.momentum = values.at("momentum");
    options.dampening = values.at("dampening");
    options.nesterov = values.at("nesterov") != 0;
    options.weight_decay = values.at("weight_decay");
    // A momentum buffer exists exactly when momentum is on, so that switch must not change.
    if ((options.momentum == 0) != (options_.momentum == 0))
        throw std::invalid_argument("sgd: momentum switched on or off between save and load");
    options.lr = this->lr();
    return checked(options);
}

template <class T>
xt::xarray<T> SGD<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                             typename Optimizer<T>::ParameterState& state) const {
    const auto& o = options_;
    xt::xarray<T> d = grad;
    if (o.weight_decay != 0) d = grad + T(o.weight_decay) * value;
    if (o.momentum != 0) {
        auto [buffer, first] = state.buffers.try_emplace("momentum_buffer", d);
        if (!first) buffer->second = buffer->second * T(o.momentum) + T(1 - o.dampening) * d;
        if (o.nesterov) d = d + T(o.momentum) * buffer->second;
        else d = buffer->second;
    }
    return value + T(-this->lr()) * d;
}

// ---- Adam and AdamW ----

template <class T>
Adam<T>::Adam(NamedTensors<T> parameters, const AdamOptions& options, bool decoupled_weight_decay)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite),
      options_(checked(options)),
      decoupled_(decoupled_weight_decay) {}

template <class T>
std::map<std::string, double> Adam<T>::hyperparameters() const {
    return {{"beta1", options_.beta1}, {"beta2", options_.beta2}, {"eps", options_.eps},
            {"weight_decay", options_.weight_decay}};
}

template <class T>
AdamOptions Adam<T>::options_from(const std::map<std::string, double>& values) const {
    AdamOptions options = options_;
    options.beta1 = values.at("beta1");
    options.beta2 = values.at("beta2");
    options.eps = values.at("eps");
    options.weight_decay = values.at("weight_decay");
    options.lr = this->lr();
    return checked(options);
}

template <class T>
xt::xarray<T> Adam<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                              typename Optimizer<T>::ParameterState& state) const {
    const auto& o = options_;
    const double lr = this->lr();
    xt::xarray<T> g = grad;
    xt::xarray<T> p = value;
    if (decoupled_) p = value * T(1 - lr * o.weight_decay);
    else if (o.weight_decay != 0) g = grad + T(o.weight_decay) * value;
    auto& m = state.buffers.try_emplace("exp_avg", xt::zeros<T>(value.shape())).first->second;
    auto& v = state.buffers.try_emplace("exp_avg_sq", xt::zeros<T>(value.shape())).first->second;
    // The operand order of torch's mul_/add_/addcmul_/addcdiv_, so float64 results agree to round-off.
    m = m * T(o.beta1) + T(1 - o.beta1) * g;
    v = v * T(o.beta2) + T(1 - o.beta2) * g * g;
    const double step = static_cast<double>(state.step);
    const double step_size = lr / (1 - std::pow(o.beta1, step));
    const double correction2_sqrt = std::sqrt(1 - std::pow(o.beta2, step));
    const xt::xarray<T> denominator = xt::sqrt(v) / T(correction2_sqrt) + T(o.eps);
    return p + T(-step_size) * m / denominator;
}

template class Optimizer<float>;
template class Optimizer<double>;
template class SGD<float>;
template class SGD<double>;
template class Adam<float>;
template class Adam<double>;

}  // namespace rw::nn
