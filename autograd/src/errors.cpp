#include "rewind/autograd/errors.hpp"

#include <fmt/format.h>

namespace rw {

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a, const Shape& b) {
    throw ShapeError(fmt::format("{}: {} (shapes {} and {})", op, problem, shape_string(a), shape_string(b)));
}

void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a) {
    throw ShapeError(fmt::format("{}: {} (shape {})", op, problem, shape_string(a)));
}

void throw_wrong_shape(std::string_view op, std::string_view what, std::string_view expected, const Shape& got) {
    throw ShapeError(fmt::format("{}: {} has the wrong shape: expected {}, got {}", op, what, expected, shape_string(got)));
}

void throw_wrong_shape(std::string_view op, std::string_view what, const Shape& expected, const Shape& got) {
    throw_wrong_shape(op, what, shape_string(expected), got);
}

}  // namespace rw
