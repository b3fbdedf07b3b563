#include "rewind/autograd/checked_size.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace rw {

std::size_t checked_element_count(std::string_view op, const Shape& shape, std::size_t element_size) {
    std::size_t count = 1, bound = std::max<std::size_t>(element_size, 1);
    bool empty = false;
    for (const std::size_t extent : shape) {
        empty = empty || extent == 0;
        const std::size_t factor = std::max<std::size_t>(extent, 1);
        if (__builtin_mul_overflow(bound, factor, &bound) || bound > max_buffer_bytes)
            throw SizeError(fmt::format("{}: shape {} is too large: it needs more than {} bytes of {}-byte elements "
                                        "(the most one buffer may hold)",
                                        op, shape_string(shape), max_buffer_bytes, element_size));
        count *= extent;  // cannot overflow: bounded by `bound` above
    }
    return empty ? 0 : count;
}

std::size_t checked_byte_size(std::string_view op, std::size_t count, std::size_t element_size) {
    std::size_t bytes = 0;
    if (__builtin_mul_overflow(count, element_size, &bytes) || bytes > max_buffer_bytes)
        throw SizeError(fmt::format("{}: {} elements of {} bytes are too many: at most {} bytes fit one buffer", op,
                                    count, element_size, max_buffer_bytes));
    return bytes;
}

std::size_t checked_product(std::string_view what, std::size_t a, std::size_t b) {
    std::size_t product = 0;
    if (__builtin_mul_overflow(a, b, &product) || product > max_buffer_bytes)
        throw SizeError(fmt::format("{}: {} x {} is too large (at most {})", what, a, b, max_buffer_bytes));
    return product;
}

}  // namespace rw
