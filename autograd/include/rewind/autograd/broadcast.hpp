#pragma once
// numpy broadcasting rules, shared by the element-wise ops.

#include <string_view>

#include "tensor.hpp"

namespace rw {

// The shape both operands broadcast to; throws ShapeError naming `op` and both shapes otherwise.
Shape broadcast_shapes(std::string_view op, const Shape& a, const Shape& b);

}  // namespace rw
