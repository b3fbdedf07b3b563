// The optimizer base (step, constraints, hyperparameters, state) and SGD, Adam, AdamW.
#include "rewind/nn/train/optim.hpp"

#include <charconv>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xmath.hpp>

namespace rw::nn {

std::string format_exact(double value) { return fmt::format("{}", value); }

std::optional<double> parse_exact(const std::string& text) {
    double value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
    return value;
}

bool Allowed::allows(double value) const {
    if (!std::isfinite(value)) return false;
    const bool above = low_open ? value > low : value >= low;
    const bool below = high_open ? value < high : value <= high;
    return above && below;
}

std::string Allowed::describe() const {
    const bool bounded_low = std::isfinite(low), bounded_high = std::isfinite(high);
    if (bounded_low && bounded_high)
        return fmt::format("in {}{}, {}{}", low_open ? '(' : '[', low, high, high_open ? ')' : ']');
    if (bounded_low) return fmt::format("{} {}", low_open ? ">" : ">=", low);
    if (bounded_high) return fmt::format("{} {}", high_open ? "<" : "<=", high);
    return "finite";
}

namespace {

template <class T>
bool all_finite(const xt::xarray<T>& values) {
    for (const T v : values)
        if (!std::isfinite(v)) return false;
    return true;
}

void check_lr(double lr) {
    if (!Allowed::at_least(0).allows(lr))
        throw std::invalid_argument(fmt::format("optimizer: invalid option lr: expected a finite value >= 0, got {}", lr));
}

// '*' matches any run of characters, everything else itself.
bool glob_matches(const std::string& pattern, const std::string& text) {
    std::size_t p = 0, t = 0, star = std::string::npos, resume = 0;
    while (t < text.size()) {
        if (p < pattern.size() && pattern[p] == '*') star = p++, resume = t;
        else if (p < pattern.size() && pattern[p] == text[t]) ++p, ++t;
        else if (star != std::string::npos) p = star + 1, t = ++resume;
        else return false;
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

}  // namespace

template <class T>
xt::xarray<T>& Optimizer<T>::ParameterState::buffer(const std::string& name, const xt::xarray<T>& like, T fill) {
    auto found = buffers.find(name);
    if (found == buffers.end()) {
        xt::xarray<T> created = xt::xarray<T>::from_shape(like.shape());
        created.fill(fill);
        found = buffers.emplace(name, std::move(created)).first;
    }
    return found->second;
}

template <class T>
double& Optimizer<T>::ParameterState::scalar(const std::string& name, double initial) {
    return scalars.try_emplace(name, initial).first->second;
}

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

// ---- hyperparameters ----

template <class T>
void Optimizer<T>::hyperparameter(const std::string& name, double& value, Allowed allowed) {
    for (const auto& entry : registered_)
        if (entry.first == name) throw std::logic_error(fmt::format("{}: option {} registered twice", kind(), name));
    if (!allowed.allows(value))
        throw std::invalid_argument(
            fmt::format("{}: invalid option {}: expected a value {}, got {}", kind(), name, allowed.describe(), value));
    registered_.push_back({name, {&value, allowed}});
}

template <class T>
void Optimizer<T>::hyperparameter(const std::string& name, bool& value) {
    for (const auto& entry : registered_)
        if (entry.first == name) throw std::logic_error(fmt::format("{}: option {} registered twice", kind(), name));
    registered_.push_back({name, {&value, Allowed::between(0, 1)}});
}

template <class T>
std::map<std::string, double> Optimizer<T>::hyperparameters() const {
    std::map<std::string, double> values;
    for (const auto& [name, entry] : registered_)
        std::visit([&, n = name](auto* target) { values[n] = double(*target); }, entry.target);
    return values;
}

template <class T>
void Optimizer<T>::check_values(const std::map<std::string, double>& values) const {
    for (const auto& [name, entry] : registered_) {
        const double value = values.at(name);
        if (std::holds_alternative<bool*>(entry.target) && value != 0 && value != 1)
            throw std::invalid_argument(fmt::format("{}: invalid option {}: expected 0 or 1, got {}", kind(), name, value));
        if (!entry.allowed.allows(value))
            throw std::invalid_argument(fmt::format("{}: invalid option {}: expected a value {}, got {}", kind(), name,
                                                    entry.allowed.describe(), value));
    }
    check_together(values);
}

// ---- the step ----

template <class T>
void Optimizer<T>::project(std::size_t index, xt::xarray<T>& value) const {
    for (const auto& constraint : constraints_)
        if (constraint.applies[index]) constraint.projection(value);
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
            project(i, values[i]);
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

// ---- constraints ----

template <class T>
void Optimizer<T>::constrain(const std::string& pattern, Projection<T> projection) {
    if (!projection) throw std::invalid_argument(fmt::format("{}: constrain('{}'): empty projection", kind(), pattern));
    Constraint constraint{pattern, std::move(projection), std::vector<bool>(parameters_.size())};
    bool any = false;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        constraint.applies[i] = glob_matches(pattern, parameters_[i].first);
        any = any || constraint.applies[i];
        names.push_back(parameters_[i].first);
    }
    if (!any)
        throw std::invalid_argument(fmt::format("{}: constrain('{}'): no parameter matches (the parameters: {})", kind(),
                                                pattern, fmt::join(names, ", ")));
    constraints_.push_back(std::move(constraint));
}

template <class T>
void Optimizer<T>::apply_constraints() {
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        bool constrained = false;
        for (const auto& constraint : constraints_) constrained = constrained || constraint.applies[i];
        if (!constrained) continue;
        xt::xarray<T> value = parameters_[i].second.value();
        project(i, value);
        parameters_[i].second.mutable_value() = std::move(value);
    }
}

template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace rw::nn
