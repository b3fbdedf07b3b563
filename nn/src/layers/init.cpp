#include "rewind/nn/layers/init.hpp"

#include <cmath>
#include <stdexcept>

#include <xtensor/xview.hpp>

#include <rewind/autograd/checked_size.hpp>

namespace rw::nn::init {

template <class T>
xt::xarray<T> uniform(const Shape& shape, double low, double high, Generator& generator) {
    xt::xarray<T> value = checked_array<T>("init::uniform", shape);
    for (auto& element : value) element = static_cast<T>(generator.uniform(low, high));
    return value;
}

template <class T>
xt::xarray<T> xavier_uniform(const Shape& shape, Generator& generator, double gain) {
    if (shape.size() != 2) throw std::invalid_argument("xavier_uniform: needs a 2-D shape");
    const double bound = gain * std::sqrt(6.0 / double(shape[0] + shape[1]));
    return uniform<T>(shape, -bound, bound, generator);
}

namespace {

// Rows of `m` made orthonormal in place (modified Gram-Schmidt, in double for accuracy).
void orthonormalise_rows(xt::xarray<double>& m) {
    const std::size_t rows = m.shape()[0];
    for (std::size_t i = 0; i < rows; ++i) {
        auto row = xt::view(m, i, xt::all());
        for (std::size_t j = 0; j < i; ++j) {
            auto previous = xt::view(m, j, xt::all());
            row -= xt::sum(row * previous)() * previous;
        }
        row /= std::sqrt(xt::sum(row * row)());
    }
}

}  // namespace

template <class T>
xt::xarray<T> orthogonal(const Shape& shape, Generator& generator, double gain) {
    if (shape.size() != 2) throw std::invalid_argument("orthogonal: needs a 2-D shape");
    const std::size_t rows = shape[0], cols = shape[1];
    xt::xarray<T> result = checked_array<T>("init::orthogonal", shape);
    // Recurrent weights stack G square blocks: make each block orthogonal on its own.
    const std::size_t block = rows % cols == 0 ? cols : rows;
    for (std::size_t start = 0; start < rows; start += block) {
        const bool tall = block > cols;
        xt::xarray<double> m = xt::xarray<double>::from_shape({tall ? cols : block, tall ? block : cols});
        for (auto& element : m) element = generator.normal();
        orthonormalise_rows(m);
        xt::xarray<double> placed = tall ? xt::xarray<double>(xt::transpose(m)) : m;
        xt::view(result, xt::range(start, start + block), xt::all()) = xt::cast<T>(placed * gain);
    }
    return result;
}

template xt::xarray<float> uniform(const Shape&, double, double, Generator&);
template xt::xarray<double> uniform(const Shape&, double, double, Generator&);
template xt::xarray<float> xavier_uniform(const Shape&, Generator&, double);
template xt::xarray<double> xavier_uniform(const Shape&, Generator&, double);
template xt::xarray<float> orthogonal(const Shape&, Generator&, double);
template xt::xarray<double> orthogonal(const Shape&, Generator&, double);

}  // namespace rw::nn::init
