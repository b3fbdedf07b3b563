#pragma once
// Private to the fused driver (sequence.cpp, layout.cpp): the sizes of one run, the op's input
// positions, aligned buffers, the small loops around the GEMMs, and the check of a cell's
// weights and arguments against its layout.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/fused/lanes.hpp"

namespace rw::nn::fused::driver {

// Every driver buffer's bytes, now and at most since the last reset (driver_memory()).
void count_allocation(std::size_t bytes);
void count_release(std::size_t bytes);

// Uninitialised, 64-byte aligned storage: the buffers are written before they are read, and
// zeroing tens of megabytes for nothing would show up in the timings.
template <class T>
class Buffer {
public:
    Buffer() = default;
    explicit Buffer(std::size_t count) {
        if (count == 0) return;
        if (count > (std::numeric_limits<std::size_t>::max() - 63) / sizeof(T)) throw std::bad_alloc();
        const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
        data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
        if (!data_) throw std::bad_alloc();
        data_.get_deleter().bytes = bytes;
        count_allocation(bytes);
    }
    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }

private:
    struct Free {
        std::size_t bytes = 0;
        void operator()(T* p) const {
            count_release(bytes);
            std::free(p);
        }
    };
    std::unique_ptr<T, Free> data_;
};

// The sizes of one run, read off the input and the weights (check_arguments).
struct Dims {
    std::size_t steps = 0, batch = 0, input = 0, hidden = 0;
    std::size_t output = 0;  // h's width: P with a projection, else hidden
    CellLayout layout;
    // The width of state s: h (state 0) has the output's width, the others hidden.
    std::size_t width(std::size_t s) const { return s == 0 ? output : hidden; }
    std::size_t gate_width() const { return layout.gates * hidden; }
    std::size_t recurrent_width() const { return layout.recurrent * hidden; }
    std::size_t second_width() const { return layout.second * hidden; }
    bool separate() const { return layout.recurrent > 0 && !layout.recurrent_into_gates; }
    // The row stride of dL/d(stage-1 product): the gate buffer's when the product adds to it.
    std::size_t recurrent_stride() const { return separate() ? recurrent_width() : gate_width(); }
};

// Rows [begin, end) of the batch.
struct Rows {
    std::size_t begin = 0, end = 0;
    std::size_t count() const { return end - begin; }
};

// Tape-op input positions: x, weights present in the layout, units, initial states.
struct InputIndex {
    int x = 0, weight_ih = 1, bias_ih = -1, weight_hh = -1, bias_hh = -1, weight_second = -1, weight_projection = -1,
        units = -1, states = -1;
};

inline std::size_t step_at(std::size_t k, std::size_t steps, bool reverse) { return reverse ? steps - 1 - k : k; }

// sums[j] (+)= sum over rows of matrix[row, j] for j < cols; rows `stride` apart. Accumulating
// sums into `scratch` [cols] first, so a segment's sum is added as one number per column.
template <class T>
void column_sums(const T* matrix, std::size_t rows, std::size_t cols, std::size_t stride, bool accumulate, T* sums,
                 T* scratch) {
    T* into = accumulate ? scratch : sums;
    std::fill_n(into, cols, T(0));
    for (std::size_t r = 0; r < rows; ++r) {
        const T* row = matrix + r * stride;
        lanes<T>(cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(into + j, load_lane<V>(into + j) + load_lane<V>(row + j));
        });
    }
    if (accumulate)
        lanes<T>(cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(sums + j, load_lane<V>(sums + j) + load_lane<V>(scratch + j));
        });
}

// out [rows, cols] = a (+ b on the first b_cols columns) on every row; a or b may be null.
template <class T>
void fill_rows(T* out, std::size_t rows, std::size_t cols, const T* a, const T* b, std::size_t b_cols) {
    if (rows == 0) return;
    if (a) std::copy_n(a, cols, out);
    else std::fill_n(out, cols, T(0));
    if (b)
        lanes<T>(b_cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(out + j, load_lane<V>(out + j) + load_lane<V>(b + j));
        });
    for (std::size_t r = 1; r < rows; ++r) std::memcpy(out + r * cols, out, cols * sizeof(T));
}

// Fills d from the weights and the input, or throws naming `op` and what does not fit the layout.
template <class T>
void check_arguments(const std::string& op, const CellWeights<T>& w, const Tensor<T>& input,
                     const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths, Dims& d);

}  // namespace rw::nn::fused::driver
