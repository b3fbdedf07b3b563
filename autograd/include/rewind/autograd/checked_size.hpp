#pragma once
// Element counts and byte sizes computed from untrusted numbers (command lines, files, a caller's
// shapes) are multiplied with overflow checks before anything is allocated: a product that wraps
// would make a buffer smaller than the loops that later fill it.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>

#include <xtensor/xarray.hpp>

#include "errors.hpp"

namespace rw {

// A shape or size too large for one buffer. The message names the op and says what was asked for
// and what fits.
struct SizeError : ShapeError {
    using ShapeError::ShapeError;
};

// The most bytes one buffer may hold: xtensor indexes and strides with the signed std::ptrdiff_t.
inline constexpr std::size_t max_buffer_bytes = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());

// The elements of `shape`, checked so that the count times `element_size` fits max_buffer_bytes;
// otherwise a SizeError such as "zeros: shape [4611686018427387904, 1, 4] needs more than
// 9223372036854775807 bytes of 8-byte elements". Empty dimensions count as 1 in the check: xtensor
// computes the strides from the other dimensions even when the array holds nothing.
std::size_t checked_element_count(std::string_view op, const Shape& shape, std::size_t element_size);

// count * element_size, or a SizeError naming `op` when it exceeds max_buffer_bytes.
std::size_t checked_byte_size(std::string_view op, std::size_t count, std::size_t element_size);

// a * b for a size computed from two sizes (e.g. layers times directions), or a SizeError naming
// `what` with both factors.
std::size_t checked_product(std::string_view what, std::size_t a, std::size_t b);

// An uninitialised array of `shape` (xt::xarray<T>::from_shape) after checked_element_count.
template <class T>
xt::xarray<T> checked_array(std::string_view op, const Shape& shape) {
    checked_element_count(op, shape, sizeof(T));
    return xt::xarray<T>::from_shape(shape);
}

}  // namespace rw
