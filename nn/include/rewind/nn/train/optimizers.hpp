#pragma once
// RMSprop, Adagrad, Adadelta, Adamax, NAdam, RAdam: torch.optim 1.13's per-tensor formulas
// (foreach=False) and defaults, each written as a user's optimizer would be (Note [writing an
// optimizer] in optim.hpp): options, kind(), update(). g below is the gradient plus wd p when
// weight_decay is set; every buffer starts at zero unless said otherwise.

#include "rewind/nn/train/optim.hpp"

namespace rw::nn {

struct RMSpropOptions {
    double lr = 1e-2;
    double alpha = 0.99;
    double eps = 1e-8;
    double weight_decay = 0.0;
    double momentum = 0.0;
    bool centered = false;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// v = alpha v + (1 - alpha) g^2;  centered: a = alpha a + (1 - alpha) g, d = sqrt(v - a^2) + eps,
// else d = sqrt(v) + eps;  momentum: b = momentum b + g / d, p = p - lr b;  else p = p - lr g / d.
// Buffers square_avg, grad_avg (centered), momentum_buffer (momentum > 0).
template <class T>
class RMSprop : public Optimizer<T> {
public:
    RMSprop(NamedTensors<T> parameters, const RMSpropOptions& options = {});
    std::string kind() const override { return "rmsprop"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>& values) const override;

private:
    RMSpropOptions o_;
};

struct AdagradOptions {
    double lr = 1e-2;
    double lr_decay = 0.0;
    double weight_decay = 0.0;
    double initial_accumulator_value = 0.0;
    double eps = 1e-10;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// sum = sum + g^2 (sum starts at initial_accumulator_value);
// p = p - lr / (1 + (step - 1) lr_decay) * g / (sqrt(sum) + eps).  Buffer sum.
template <class T>
class Adagrad : public Optimizer<T> {
public:
    Adagrad(NamedTensors<T> parameters, const AdagradOptions& options = {});
    std::string kind() const override { return "adagrad"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"sum"};
    }

private:
    AdagradOptions o_;
};

struct AdadeltaOptions {
    double lr = 1.0;
    double rho = 0.9;
    double eps = 1e-6;
    double weight_decay = 0.0;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// v = rho v + (1 - rho) g^2;  delta = sqrt(u + eps) / sqrt(v + eps) * g;
// u = rho u + (1 - rho) delta^2;  p = p - lr delta.  Buffers square_avg (v), acc_delta (u).
template <class T>
class Adadelta : public Optimizer<T> {
public:
    Adadelta(NamedTensors<T> parameters, const AdadeltaOptions& options = {});
    std::string kind() const override { return "adadelta"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"square_avg", "acc_delta"};
    }

private:
    AdadeltaOptions o_;
};

// Adamax, NAdam and RAdam share Adam's moments (beta1, beta2) with their own defaults.
struct AdamaxOptions {
    double lr = 2e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// m = beta1 m + (1 - beta1) g;  u = max(beta2 u, |g| + eps);  p = p - lr / (1 - beta1^step) m / u.
// Buffers exp_avg (m), exp_inf (u).
template <class T>
class Adamax : public Optimizer<T> {
public:
    Adamax(NamedTensors<T> parameters, const AdamaxOptions& options = {});
    std::string kind() const override { return "adamax"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"exp_avg", "exp_inf"};
    }

private:
    AdamaxOptions o_;
};

struct NAdamOptions {
    double lr = 2e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    double momentum_decay = 4e-3;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// mu_t = beta1 (1 - 0.96^(t psi) / 2) (psi: momentum_decay);  P = P mu_t (P starts at 1);
// m, v as Adam's;  d = sqrt(v / (1 - beta2^t)) + eps;
// p = p - lr (1 - mu_t) / (1 - P) g / d - lr mu_{t+1} / (1 - P mu_t mu_{t+1}) m / d.
// Note [NAdam in torch 1.13]: torch keeps P (mu_product) as a float32 scalar whatever the
// parameters' type, and its next-step product multiplies by mu_t a second time (P mu_t mu_{t+1},
// not P mu_{t+1}; changed in later releases). Both are followed here, so float64 results agree
// with torch 1.13 to round-off. Buffers exp_avg, exp_avg_sq; per-parameter scalar mu_product.
template <class T>
class NAdam : public Optimizer<T> {
public:
    NAdam(NamedTensors<T> parameters, const NAdamOptions& options = {});
    std::string kind() const override { return "nadam"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"exp_avg", "exp_avg_sq"};
    }

private:
    NAdamOptions o_;
};

struct RAdamOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    NonFinitePolicy non_finite = NonFinitePolicy::raise;
};

// m, v as Adam's;  rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t);
// rho_t > 5: p = p - lr m / (1 - beta1^t) * r sqrt(1 - beta2^t) / (sqrt(v) + eps) with
// r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t));
// otherwise p = p - lr m / (1 - beta1^t).  Buffers exp_avg, exp_avg_sq.
template <class T>
class RAdam : public Optimizer<T> {
public:
    RAdam(NamedTensors<T> parameters, const RAdamOptions& options = {});
    std::string kind() const override { return "radam"; }

protected:
    xt::xarray<T> update(const xt::xarray<T>& value, const xt::xarray<T>& grad,
                         typename Optimizer<T>::ParameterState& state) const override;
    std::optional<std::vector<std::string>> expected_buffers(const std::map<std::string, double>&) const override {
        return std::vector<std::string>{"exp_avg", "exp_avg_sq"};
    }

private:
    RAdamOptions o_;
};

#define REWIND_OPTIMIZERS_EXTERN(T)          \
    extern template class RMSprop<T>;        \
    extern template class Adagrad<T>;        \
    extern template class Adadelta<T>;       \
    extern template class Adamax<T>;         \
    extern template class NAdam<T>;          \
    extern template class RAdam<T>;
REWIND_OPTIMIZERS_EXTERN(float)
REWIND_OPTIMIZERS_EXTERN(double)
#undef REWIND_OPTIMIZERS_EXTERN

}  // namespace rw::nn
