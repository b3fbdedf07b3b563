#include "rewind/nn/train/clip.hpp"

#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "rewind/nn/train/optim.hpp"

namespace rw::nn {

namespace {

template <class T>
NamedTensors<T> numbered(const std::vector<Tensor<T>>& parameters) {
    NamedTensors<T> named;
    for (std::size_t i = 0; i < parameters.size(); ++i) named.emplace_back(fmt::format("#{}", i), parameters[i]);
    return named;
}

}  // namespace

template <class T>
double clip_grad_norm(const NamedTensors<T>& parameters, double max_norm, bool error_if_nonfinite) {
    if (!(max_norm > 0)) throw std::invalid_argument(fmt::format("clip_grad_norm: max_norm must be positive, got {}", max_norm));
    double squares = 0;
    for (const auto& named : parameters) {
        const Tensor<T> grad = named.second.grad();
        if (!grad.defined()) continue;
        for (const T g : grad.value()) squares += double(g) * double(g);
    }
    const double norm = std::sqrt(squares);
    if (!std::isfinite(norm)) {
        if (error_if_nonfinite)
            for (const auto& [name, parameter] : parameters) {
                const Tensor<T> grad = parameter.grad();
                if (!grad.defined()) continue;
                for (const T g : grad.value())
                    if (!std::isfinite(g))
                        throw NonFiniteError(fmt::format(
                            "clip_grad_norm: the gradient norm is {} (the gradient of parameter '{}' holds NaN or Inf)",
                            norm, name));
            }
        return norm;  // finite elements whose squares overflow: leave them to the optimizer as well
    }
    const double coefficient = max_norm / (norm + 1e-6);
    if (coefficient < 1)
        for (const auto& named : parameters) {
            Tensor<T> parameter = named.second;  // the same tensor: a handle
            const Tensor<T> grad = parameter.grad();
            // A fresh tensor, never in place: the engine may share one gradient between tensors.
            if (grad.defined()) parameter.set_grad(Tensor<T>(xt::xarray<T>(grad.value() * T(coefficient))));
        }
    return norm;
}

template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& parameters, double max_norm, bool error_if_nonfinite) {
    return clip_grad_norm(numbered(parameters), max_norm, error_if_nonfinite);
}

template <class T>
void clip_grad_value(const NamedTensors<T>& parameters, double clip_value) {
    if (!(clip_value >= 0)) throw std::invalid_argument(fmt::format("clip_grad_value: invalid clip value {}", clip_value));
    const T bound = T(clip_value);
    for (const auto& named : parameters) {
        Tensor<T> parameter = named.second;
        const Tensor<T> grad = parameter.grad();
        if (!grad.defined()) continue;
        xt::xarray<T> clipped = grad.value();
        for (T& g : clipped) g = g > bound ? bound : (g < -bound ? -bound : g);  // NaN fails both tests
        parameter.set_grad(Tensor<T>(std::move(clipped)));
    }
}

template <class T>
void clip_grad_value(const std::vector<Tensor<T>>& parameters, double clip_value) {
    clip_grad_value(numbered(parameters), clip_value);
}

template double clip_grad_norm(const NamedTensors<float>&, double, bool);
template double clip_grad_norm(const NamedTensors<double>&, double, bool);
template double clip_grad_norm(const std::vector<Tensor<float>>&, double, bool);
template double clip_grad_norm(const std::vector<Tensor<double>>&, double, bool);
template void clip_grad_value(const NamedTensors<float>&, double);
template void clip_grad_value(const NamedTensors<double>&, double);
template void clip_grad_value(const std::vector<Tensor<float>>&, double);
template void clip_grad_value(const std::vector<Tensor<double>>&, double);

}  // namespace rw::nn
