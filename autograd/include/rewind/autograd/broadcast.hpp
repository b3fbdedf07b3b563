#pragma once
// numpy broadcasting rules, shared by the element-wise ops.

#include <string_view>

#include "tensor.hpp"

namespace rw {

// The shape both operands broadcast to; throws ShapeError naming `op` and both shapes otherwise.
Shape broadcast_shapes(std::string_view op, const Shape& a, const Shape& b);

// How many elements `row` has when it broadcasts against `full` as one row repeated over full's
// leading axes (a bias [N] or [1, N] against [M, N], a scalar against anything), giving full's
// shape; 0 when it does not. The element-wise ops and broadcast_to then copy whole rows.
template <class S1, class S2>
std::size_t broadcast_row_length(const S1& full, const S2& row) {
    std::size_t skip = 0;  // row's leading 1s
    while (skip < row.size() && row[skip] == 1) ++skip;
    const std::size_t rank = row.size() - skip;
    if (row.size() > full.size() || rank == full.size()) return 0;
    std::size_t length = 1;
    for (std::size_t i = 0; i < rank; ++i) {
        if (row[skip + i] != full[full.size() - rank + i]) return 0;
        length *= row[skip + i];
    }
    return length;
}

}  // namespace rw
