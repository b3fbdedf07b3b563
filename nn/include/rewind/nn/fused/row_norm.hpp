#pragma once
// Row reductions for fused rules (cell_rules.hpp): a rule sees its whole row, so it may sum over
// it, e.g. to normalise it (layer norm inside a rule, examples/ln_lstm_cell.hpp). RowSum adds up
// lanes<T>() values; row_moments gives the mean and 1 / sqrt(variance + eps) of a row the way the
// layer_norm op computes them (two passes, biased variance), so both paths agree to round-off.

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "rewind/nn/fused/lanes.hpp"

namespace rw::nn::fused {

// A sum of the values a lanes<T>() body produces: SIMD batches and tail scalars apart, then
// reduced once.
template <class T>
class RowSum {
public:
    template <class V>
    void add(const V& v) {
        if constexpr (std::is_arithmetic_v<V>) tail_ += v;
        else body_ += v;
    }
    T total() const { return xsimd::hadd(body_) + tail_; }

private:
    // Parentheses: braces would pick batch's initializer_list constructor, setting one lane only.
    xsimd::batch<T> body_ = xsimd::batch<T>(T(0));
    T tail_ = 0;
};

template <class T>
struct RowMoments {
    T mean = 0;
    T rstd = 0;  // 1 / sqrt(biased variance + eps)
};

// Over `count` blocks of width n (a row split over gate blocks or saved buffers): blocks[k][j].
template <class T>
RowMoments<T> row_moments(const T* const* blocks, std::size_t count, std::size_t n, T eps) {
    RowSum<T> total;
    for (std::size_t k = 0; k < count; ++k)
        lanes<T>(n, [&](std::size_t j, auto tag) { total.add(load_lane<decltype(tag)>(blocks[k] + j)); });
    const T size = T(count * n), mean = total.total() / size;
    RowSum<T> squares;
    for (std::size_t k = 0; k < count; ++k)
        lanes<T>(n, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V d = load_lane<V>(blocks[k] + j) - V(mean);
            squares.add(d * d);
        });
    return {mean, T(1) / std::sqrt(squares.total() / size + eps)};
}

// One contiguous row of n.
template <class T>
RowMoments<T> row_moments(const T* row, std::size_t n, T eps) {
    return row_moments(&row, 1, n, eps);
}

}  // namespace rw::nn::fused
