#pragma once
// Exception types. User errors are exceptions, never abort() or exit().

#include <stdexcept>
#include <string>
#include <string_view>

#include "tensor.hpp"

namespace rw {

// Shapes that do not fit an op. The message names the op and the shapes involved.
struct ShapeError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// NaN or Inf produced while anomaly mode is on.
struct AnomalyError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Misuse of the tape: backward through a freed graph, backward from a non-scalar without a seed.
struct GraphError : std::logic_error {
    using std::logic_error::logic_error;
};

// "op: shapes [2, 3] and [4] do not broadcast" style messages.
[[noreturn]] void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a, const Shape& b);
[[noreturn]] void throw_shape_error(std::string_view op, std::string_view problem, const Shape& a);
// "op: what has the wrong shape: expected [1, 3, 6], got [3, 6]". `expected` as text where part
// of it is free, e.g. "[B, 4]".
[[noreturn]] void throw_wrong_shape(std::string_view op, std::string_view what, const Shape& expected, const Shape& got);
[[noreturn]] void throw_wrong_shape(std::string_view op, std::string_view what, std::string_view expected, const Shape& got);

}  // namespace rw
