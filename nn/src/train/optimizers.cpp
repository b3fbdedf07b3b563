// The update rules: SGD, Adam/AdamW, RMSprop, Adagrad, Adadelta, Adamax, NAdam, RAdam, each in
// torch.optim 1.13's _single_tensor_<name> operand order so that float64 results agree with
// torch to round-off (tests/make_optim_fixtures.py). Formulas: optim.hpp, optimizers.hpp.
#include "rewind/nn/train/optimizers.hpp"

#include <cmath>

#include <fmt/format.h>
#include <xtensor/xmath.hpp>

namespace rw::nn {

namespace {

constexpr bool open_high = Allowed::open_high;

template <class T>
xt::xarray<T> with_weight_decay(const xt::xarray<T>& value, const xt::xarray<T>& grad, double weight_decay) {
    if (weight_decay == 0) return grad;
    return grad + T(weight_decay) * value;
}

// Adam's two moments, which NAdam and RAdam share: m = beta1 m + (1 - beta1) g (buffer exp_avg),
// v = beta2 v + (1 - beta2) g^2 (buffer exp_avg_sq).
template <class T>
struct Moments {
    const xt::xarray<T>& exp_avg;
    const xt::xarray<T>& exp_avg_sq;
};

template <class T, class State>
Moments<T> update_moments(State& state, const xt::xarray<T>& value, const xt::xarray<T>& g, double beta1, double beta2) {
    auto& exp_avg = state.buffer("exp_avg", value);
    auto& exp_avg_sq = state.buffer("exp_avg_sq", value);
    exp_avg = exp_avg * T(beta1) + T(1 - beta1) * g;
    exp_avg_sq = exp_avg_sq * T(beta2) + T(1 - beta2) * g * g;
    return {exp_avg, exp_avg_sq};
}

}  // namespace

// ---- SGD ----

template <class T>
SGD<T>::SGD(NamedTensors<T> parameters, const SGDOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("momentum", o_.momentum);
    this->hyperparameter("dampening", o_.dampening, Allowed::any());
    this->hyperparameter("nesterov", o_.nesterov);
    this->hyperparameter("weight_decay", o_.weight_decay);
    check_together(this->hyperparameters());
}

template <class T>
void SGD<T>::check_together(const std::map<std::string, double>& values) const {
    if (values.at("nesterov") != 0 && (values.at("momentum") <= 0 || values.at("dampening") != 0))
        throw std::invalid_argument(fmt::format(
            "sgd: invalid option nesterov: expected momentum > 0 and dampening 0 with it, got momentum {} and dampening {}",
            values.at("momentum"), values.at("dampening")));
}

template <class T>
std::optional<std::vector<std::string>> SGD<T>::expected_buffers(const std::map<std::string, double>& values) const {
    if (values.at("momentum") == 0) return std::vector<std::string>{};
    return std::vector<std::string>{"momentum_buffer"};
}

template <class T>
xt::xarray<T> SGD<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                             typename Optimizer<T>::ParameterState& state) const {
    xt::xarray<T> d = with_weight_decay(value, grad, o_.weight_decay);
    if (o_.momentum != 0) {
        auto [buffer, first] = state.buffers.try_emplace("momentum_buffer", d);
        if (!first) buffer->second = buffer->second * T(o_.momentum) + T(1 - o_.dampening) * d;
        if (o_.nesterov) d = d + T(o_.momentum) * buffer->second;
        else d = buffer->second;
    }
    return value + T(-this->lr()) * d;
}

// ---- Adam and AdamW ----

template <class T>
Adam<T>::Adam(NamedTensors<T> parameters, const AdamOptions& options, bool decoupled_weight_decay)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options), decoupled_(decoupled_weight_decay) {
    this->hyperparameter("beta1", o_.beta1, Allowed::between(0, 1, open_high));
    this->hyperparameter("beta2", o_.beta2, Allowed::between(0, 1, open_high));
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
}

template <class T>
xt::xarray<T> Adam<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                              typename Optimizer<T>::ParameterState& state) const {
    const double lr = this->lr();
    xt::xarray<T> g = grad;
    xt::xarray<T> p = value;
    if (decoupled_) p = value * T(1 - lr * o_.weight_decay);
    else g = with_weight_decay(value, grad, o_.weight_decay);
    const auto [m, v] = update_moments(state, value, g, o_.beta1, o_.beta2);
    const double step = static_cast<double>(state.step);
    const double step_size = lr / (1 - std::pow(o_.beta1, step));
    const double correction2_sqrt = std::sqrt(1 - std::pow(o_.beta2, step));
    const xt::xarray<T> denominator = xt::sqrt(v) / T(correction2_sqrt) + T(o_.eps);
    return p + T(-step_size) * m / denominator;
}

// ---- RMSprop ----

template <class T>
RMSprop<T>::RMSprop(NamedTensors<T> parameters, const RMSpropOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("alpha", o_.alpha);
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
    this->hyperparameter("momentum", o_.momentum);
    this->hyperparameter("centered", o_.centered);
}

template <class T>
std::optional<std::vector<std::string>> RMSprop<T>::expected_buffers(const std::map<std::string, double>& values) const {
    std::vector<std::string> buffers{"square_avg"};
    if (values.at("centered") != 0) buffers.push_back("grad_avg");
    if (values.at("momentum") > 0) buffers.push_back("momentum_buffer");
    return buffers;
}

template <class T>
xt::xarray<T> RMSprop<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                                 typename Optimizer<T>::ParameterState& state) const {
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    auto& square_avg = state.buffer("square_avg", value);
    square_avg = square_avg * T(o_.alpha) + T(1 - o_.alpha) * g * g;
    xt::xarray<T> avg;
    if (o_.centered) {
        auto& grad_avg = state.buffer("grad_avg", value);
        grad_avg = grad_avg * T(o_.alpha) + T(1 - o_.alpha) * g;
        avg = xt::sqrt(square_avg + T(-1) * grad_avg * grad_avg);
    } else {
        avg = xt::sqrt(square_avg);
    }
    avg = avg + T(o_.eps);
    if (o_.momentum > 0) {
        auto& buffer = state.buffer("momentum_buffer", value);
        buffer = buffer * T(o_.momentum) + g / avg;
        return value + T(-this->lr()) * buffer;
    }
    return value + T(-this->lr()) * g / avg;
}

// ---- Adagrad ----

template <class T>
Adagrad<T>::Adagrad(NamedTensors<T> parameters, const AdagradOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("lr_decay", o_.lr_decay);
    this->hyperparameter("weight_decay", o_.weight_decay);
    this->hyperparameter("initial_accumulator_value", o_.initial_accumulator_value);
    this->hyperparameter("eps", o_.eps);
}

template <class T>
xt::xarray<T> Adagrad<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                                 typename Optimizer<T>::ParameterState& state) const {
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    const double clr = this->lr() / (1 + double(state.step - 1) * o_.lr_decay);
    auto& sum = state.buffer("sum", value, T(o_.initial_accumulator_value));
    sum = sum + g * g;
    return value + T(-clr) * g / (xt::sqrt(sum) + T(o_.eps));
}

// ---- Adadelta ----

template <class T>
Adadelta<T>::Adadelta(NamedTensors<T> parameters, const AdadeltaOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("rho", o_.rho, Allowed::between(0, 1));
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
}

template <class T>
xt::xarray<T> Adadelta<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                                  typename Optimizer<T>::ParameterState& state) const {
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    auto& square_avg = state.buffer("square_avg", value);
    auto& acc_delta = state.buffer("acc_delta", value);
    square_avg = square_avg * T(o_.rho) + T(1 - o_.rho) * g * g;
    const xt::xarray<T> std_dev = xt::sqrt(square_avg + T(o_.eps));
    const xt::xarray<T> delta = xt::sqrt(acc_delta + T(o_.eps)) / std_dev * g;
    acc_delta = acc_delta * T(o_.rho) + T(1 - o_.rho) * delta * delta;
    return value + T(-this->lr()) * delta;
}

// ---- Adamax ----

template <class T>
Adamax<T>::Adamax(NamedTensors<T> parameters, const AdamaxOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("beta1", o_.beta1, Allowed::between(0, 1, open_high));
    this->hyperparameter("beta2", o_.beta2, Allowed::between(0, 1, open_high));
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
}

template <class T>
xt::xarray<T> Adamax<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                                typename Optimizer<T>::ParameterState& state) const {
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    auto& exp_avg = state.buffer("exp_avg", value);
    auto& exp_inf = state.buffer("exp_inf", value);
    exp_avg = exp_avg * T(o_.beta1) + T(1 - o_.beta1) * g;
    exp_inf = xt::maximum(exp_inf * T(o_.beta2), xt::abs(g) + T(o_.eps));
    const double clr = this->lr() / (1 - std::pow(o_.beta1, double(state.step)));
    return value + T(-clr) * exp_avg / exp_inf;
}

// ---- NAdam ----

template <class T>
NAdam<T>::NAdam(NamedTensors<T> parameters, const NAdamOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("beta1", o_.beta1, Allowed::between(0, 1, open_high));
    this->hyperparameter("beta2", o_.beta2, Allowed::between(0, 1, open_high));
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
    this->hyperparameter("momentum_decay", o_.momentum_decay);
}

template <class T>
xt::xarray<T> NAdam<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                               typename Optimizer<T>::ParameterState& state) const {
    const double step = double(state.step), lr = this->lr();
    const double bias_correction2 = 1 - std::pow(o_.beta2, step);
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    const double mu = o_.beta1 * (1. - 0.5 * std::pow(0.96, step * o_.momentum_decay));
    const double mu_next = o_.beta1 * (1. - 0.5 * std::pow(0.96, (step + 1) * o_.momentum_decay));
    // Note [NAdam in torch 1.13] (optimizers.hpp): a float32 product, mu taken twice in the next one.
    double& mu_product = state.scalar("mu_product", 1.0);
    mu_product = double(float(mu_product) * float(mu));
    const double mu_product_next = double(float(float(mu_product) * float(mu)) * float(mu_next));
    const auto [exp_avg, exp_avg_sq] = update_moments(state, value, g, o_.beta1, o_.beta2);
    const xt::xarray<T> denominator = xt::sqrt(exp_avg_sq / T(bias_correction2)) + T(o_.eps);
    const xt::xarray<T> p = value + T(-lr * (1. - mu) / (1. - mu_product)) * g / denominator;
    return p + T(-lr * mu_next / (1. - mu_product_next)) * exp_avg / denominator;
}

// ---- RAdam ----

template <class T>
RAdam<T>::RAdam(NamedTensors<T> parameters, const RAdamOptions& options)
    : Optimizer<T>(std::move(parameters), options.lr, options.non_finite), o_(options) {
    this->hyperparameter("beta1", o_.beta1, Allowed::between(0, 1, open_high));
    this->hyperparameter("beta2", o_.beta2, Allowed::between(0, 1, open_high));
    this->hyperparameter("eps", o_.eps);
    this->hyperparameter("weight_decay", o_.weight_decay);
}

template <class T>
xt::xarray<T> RAdam<T>::update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                               typename Optimizer<T>::ParameterState& state) const {
    const double step = double(state.step), lr = this->lr();
    const double bias_correction1 = 1 - std::pow(o_.beta1, step);
    const double bias_correction2 = 1 - std::pow(o_.beta2, step);
    const xt::xarray<T> g = with_weight_decay(value, grad, o_.weight_decay);
    const auto [exp_avg, exp_avg_sq] = update_moments(state, value, g, o_.beta1, o_.beta2);
    const xt::xarray<T> corrected = exp_avg / T(bias_correction1);
    const double rho_inf = 2 / (1 - o_.beta2) - 1;
    const double rho_t = rho_inf - 2 * step * std::pow(o_.beta2, step) / bias_correction2;
    if (rho_t > 5.) {
        const double rect =
            std::sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
        const xt::xarray<T> adaptive_lr = T(std::sqrt(bias_correction2)) / (xt::sqrt(exp_avg_sq) + T(o_.eps));
        return value + T(-1.0) * (corrected * T(lr) * adaptive_lr * T(rect));
    }
    return value + T(-1.0) * (corrected * T(lr));
}

#define REWIND_OPTIMIZERS(T)      \
    template class SGD<T>;        \
    template class Adam<T>;       \
    template class RMSprop<T>;    \
    template class Adagrad<T>;    \
    template class Adadelta<T>;   \
    template class Adamax<T>;     \
    template class NAdam<T>;      \
    template class RAdam<T>;
REWIND_OPTIMIZERS(float)
REWIND_OPTIMIZERS(double)
#undef REWIND_OPTIMIZERS

}  // namespace rw::nn
