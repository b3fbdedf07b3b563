#include "rewind/nn/train/constraint.hpp"

#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace rw::nn::constraints {

template <class T>
Projection<T> clamp(double low, double high) {
    if (!(low <= high) || std::isnan(low) || std::isnan(high))
        throw std::invalid_argument(fmt::format("constraints::clamp: expected low <= high, got low {} and high {}", low, high));
    return [low = T(low), high = T(high)](xt::xarray<T>& value) {
        for (T& v : value) v = std::min(std::max(v, low), high);
    };
}

template <class T>
Projection<T> non_negative() {
    return [](xt::xarray<T>& value) {
        for (T& v : value) v = std::max(v, T(0));
    };
}

template <class T>
Projection<T> max_norm(double max_norm) {
    if (!(max_norm >= 0) || !std::isfinite(max_norm))
        throw std::invalid_argument(fmt::format("constraints::max_norm: expected a finite norm >= 0, got {}", max_norm));
    return [max_norm](xt::xarray<T>& value) {
        if (value.dimension() == 0 || value.size() == 0) return;
        const std::size_t rows = value.shape()[0], width = value.size() / rows;
        T* data = value.data();
        for (std::size_t r = 0; r < rows; ++r) {
            double squares = 0;
            for (std::size_t j = 0; j < width; ++j) squares += double(data[r * width + j]) * double(data[r * width + j]);
            const double norm = std::sqrt(squares);
            if (norm <= max_norm) continue;
            const T factor = T(max_norm / (norm + 1e-7));  // torch.renorm's
            for (std::size_t j = 0; j < width; ++j) data[r * width + j] *= factor;
        }
    };
}

template Projection<float> clamp<float>(double, double);
template Projection<double> clamp<double>(double, double);
template Projection<float> non_negative<float>();
template Projection<double> non_negative<double>();
template Projection<float> max_norm<float>(double);
template Projection<double> max_norm<double>(double);

}  // namespace rw::nn::constraints
