// An optimizer's state out and back in (Optimizer::state, validate_state, load_state): the base
// saves whatever hyperparameters were registered and whatever buffers update() made, so a
// user's optimizer needs no checkpoint code.
#include "rewind/nn/train/optim.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>

namespace rw::nn {

namespace {

[[noreturn]] void reject(const std::string& source, const std::string& what) {
    throw SafetensorsError(fmt::format("{}: optimizer state: {}", source, what));
}

}  // namespace

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
        for (const auto& [scalar, value] : state.scalars) out.scalars["state." + name + "." + scalar] = format_exact(value);
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
    if (!Allowed::at_least(0).allows(staged.lr)) reject(source, fmt::format("invalid lr {}", staged.lr));
    std::set<std::string> expected{"kind", "lr"};
    for (const auto& entry : registered_) {
        staged.hyperparameters[entry.first] = number("hyper." + entry.first);
        expected.insert("hyper." + entry.first);
    }
    try {
        check_values(staged.hyperparameters);
    } catch (const std::invalid_argument& error) {
        reject(source, error.what());
    }

    // A parameter's entries are "<name>.<entry>": the entry is what follows the last dot, so
    // dotted parameter names ("layer.weight") are unambiguous.
    std::set<std::string> tensors_expected;
    const std::optional<std::vector<std::string>> required = expected_buffers(staged.hyperparameters);
    staged.states.resize(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
        const auto& [name, parameter] = parameters_[i];
        auto step = state.tensors.find(name + ".step");
        if (step == state.tensors.end()) continue;  // never updated: no buffers either
        const auto* count = std::get_if<xt::xarray<std::int64_t>>(&step->second);
        if (!count || count->size() != 1 || (*count)(0) < 1)
            reject(source, fmt::format("tensor '{}.step' must be one positive I64", name));
        ParameterState& target_state = staged.states[i];
        target_state.step = (*count)(0);
        tensors_expected.insert(name + ".step");
        const std::string prefix = name + ".";
        for (const auto& [key, tensor] : state.tensors) {
            if (key.rfind(prefix, 0) != 0 || key.find('.', prefix.size()) != std::string::npos || key == name + ".step")
                continue;
            const std::string buffer = key.substr(prefix.size());
            if (required && std::find(required->begin(), required->end(), buffer) == required->end())
                continue;  // reported below as unexpected
            if (shape_of(tensor) != parameter.shape())
                reject(source, fmt::format("tensor '{}' has shape {}, the parameter {}", key, shape_string(shape_of(tensor)),
                                           shape_string(parameter.shape())));
            auto& target = target_state.buffers[buffer];
            if (const auto* f = std::get_if<xt::xarray<float>>(&tensor)) target = xt::cast<T>(*f);
            else if (const auto* d = std::get_if<xt::xarray<double>>(&tensor)) target = xt::cast<T>(*d);
            else reject(source, fmt::format("tensor '{}' has dtype {}, expected F32 or F64", key, dtype_name(tensor)));
            tensors_expected.insert(key);
        }
        if (required)
            for (const auto& buffer : *required)
                if (!target_state.buffers.count(buffer)) reject(source, fmt::format("tensor '{}.{}' is missing", name, buffer));
        const std::string scalar_prefix = "state." + prefix;
        for (const auto& [key, text] : state.scalars) {
            if (key.rfind(scalar_prefix, 0) != 0 || key.find('.', scalar_prefix.size()) != std::string::npos) continue;
            const auto value = parse_exact(text);
            if (!value || !std::isfinite(*value)) reject(source, fmt::format("'{}' is not a finite number: '{}'", key, text));
            target_state.scalars[key.substr(scalar_prefix.size())] = *value;
            expected.insert(key);
        }
    }
    for (const auto& entry : state.scalars)
        if (!expected.count(entry.first)) reject(source, fmt::format("unexpected entry '{}'", entry.first));
    for (const auto& entry : state.tensors)
        if (!tensors_expected.count(entry.first)) reject(source, fmt::format("unexpected tensor '{}'", entry.first));
    return staged;
}

template <class T>
void Optimizer<T>::validate_state(const OptimizerState& state, const std::string& source) const {
    parse_state(state, source);
}

template <class T>
void Optimizer<T>::load_state(const OptimizerState& state, const std::string& source) {
    Staged staged = parse_state(state, source);
    for (auto& [name, entry] : registered_) {
        const double value = staged.hyperparameters.at(name);
        std::visit([value](auto* target) { *target = static_cast<std::remove_pointer_t<decltype(target)>>(value); },
                   entry.target);
    }
    lr_ = staged.lr;
    states_ = std::move(staged.states);
}

#define REWIND_OPTIMIZER_STATE(T)                                                                             \
    template OptimizerState Optimizer<T>::state() const;                                                      \
    template void Optimizer<T>::validate_state(const OptimizerState&, const std::string&) const;              \
    template void Optimizer<T>::load_state(const OptimizerState&, const std::string&);                        \
    template typename Optimizer<T>::Staged Optimizer<T>::parse_state(const OptimizerState&, const std::string&) const;
REWIND_OPTIMIZER_STATE(float)
REWIND_OPTIMIZER_STATE(double)
#undef REWIND_OPTIMIZER_STATE

}  // namespace rw::nn
