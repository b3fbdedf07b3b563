#pragma once
// Parameter initialisation. Every function draws from the given generator, so a seed fixes
// the whole model.

#include <xtensor/xarray.hpp>

#include <rewind/autograd/random.hpp>
#include <rewind/autograd/tensor.hpp>

namespace rw::nn::init {

// U(low, high) of the given shape: PyTorch's recurrent default is U(-1/sqrt(H), 1/sqrt(H)).
template <class T> xt::xarray<T> uniform(const Shape& shape, double low, double high, Generator& generator);
// Xavier/Glorot uniform for a [fan_out, fan_in] matrix: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).
template <class T> xt::xarray<T> xavier_uniform(const Shape& shape, Generator& generator, double gain = 1.0);
// A [rows, cols] matrix with orthonormal rows or columns (whichever are fewer), from a Gaussian
// matrix by Gram-Schmidt; for a stacked recurrent weight [G*H, H] each H x H block is orthogonal.
template <class T> xt::xarray<T> orthogonal(const Shape& shape, Generator& generator, double gain = 1.0);

}  // namespace rw::nn::init
