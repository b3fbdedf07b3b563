// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// the saved buffers and the tape op around a cell's point-wise rules (cell_rules.hpp).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/fused/lanes.hpp"
#include "rewind/nn/layers/cell.hpp"
#include "probe.hpp"

namespace rw::nn::fused {

template <class T>
void CellRules<T>::forward_second(const ForwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but forward_second() is not written");
}

template <class T>
void CellRules<T>::backward_second(const BackwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but backward_second() is not written");
}

template <class T>
std::vector<std::string> CellRules<T>::gate_names() const {
    std::vector<std::string> names;
    for (std::size_t g = 0; g < layout().gates; ++g) names.push_back(fmt::format("gate {}", g));
    return names;
}

double forward_flops_per_step(const CellLayout& layout, std::size_t batch, std::size_t input, std::size_t hidden) {
    const double B = double(batch), H = double(hidden);
    return 2.0 * B * H * (double(layout.gates) * double(input) + double(layout.recurrent + layout.second) * H);
}

std::size_t saved_bytes_per_step(const CellLayout& layout, std::size_t batch, std::size_t hidden,
                                 std::size_t element_size, bool with_lengths) {
    // gate buffer [B, G*H], the states before the step, the rule's own buffers and q (two-stage).
    const std::size_t per_row =
        (layout.gates + layout.states + layout.saved + (layout.second > 0 ? 1 : 0)) * hidden;
    return batch * per_row * element_size + (with_lengths ? batch : 0);
}

namespace {

// The bytes all driver buffers hold now and their high-water mark (driver_memory()).
std::atomic<std::size_t> live_bytes{0}, peak_bytes{0};

void count_allocation(std::size_t bytes) {
    const std::size_t now = live_bytes.fetch_add(bytes) + bytes;
    std::size_t peak = peak_bytes.load();
    while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {}
}

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
            live_bytes.fetch_sub(bytes);
            std::free(p);
        }
    };
    std::unique_ptr<T, Free> data_;
};

struct Dims {
    std::size_t steps = 0, batch = 0, input = 0, hidden = 0;
    CellLayout layout;
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
    int x = 0, weight_ih = 1, bias_ih = -1, weight_hh = -1, bias_hh = -1, weight_second = -1, units = -1, states = -1;
};

// Everything the backward needs besides the op's inputs. The step buffers form a window over
// the steps, in time order (slot t - window_t0 is step t whatever the direction): all of them,
// or one segment of `segment` steps when recomputing (note: Recomputation).
template <class T>
struct Saved {
    const CellRules<T>* rules = nullptr;
    std::shared_ptr<const void> owner;  // keeps `rules` alive while the graph is
    Dims dims;
    InputIndex index;
    bool reverse = false;
    std::size_t segment = 0;          // steps per window: dims.steps unless recomputing
    Buffer<T> gates;                  // [W, B, G*H] as the forward rule left them
    std::vector<Buffer<T>> states;    // per state: [W, B, H] before step t
    std::vector<Buffer<T>> finals;    // per state: [B, H] after the last processed step
    std::vector<Buffer<T>> extra;     // per saved buffer: [W, B, H]
    Buffer<T> gated;                  // two-stage: q [W, B, H]
    std::vector<Buffer<T>> checkpoints;  // recomputing: per state [segments, B, H], before each segment
    std::size_t window_t0 = 0;           // the first step the window holds
    std::size_t window_segment = 0;      // which segment it holds
    std::vector<Rows> groups;            // the batch's row groups, one per thread (note: Threads)
    std::vector<std::uint8_t> active;  // [T, B], empty when every row runs every step
    std::vector<bool> all_active;      // per step
    std::shared_ptr<detail::SequenceProbe<T>> probe;  // null unless checking

    bool row_active(std::size_t t, std::size_t b) const {
        return active.empty() || all_active[t] || active[t * dims.batch + b];
    }
    std::size_t segments() const { return (dims.steps + segment - 1) / segment; }
    bool recomputing() const { return segments() > 1; }
    // Segment j covers the processing positions k in [first_k(j), end_k(j)).
    std::size_t first_k(std::size_t j) const { return j * segment; }
    std::size_t end_k(std::size_t j) const { return std::min(dims.steps, (j + 1) * segment); }
    // The lowest step t of segment j (its last in the reverse direction).
    std::size_t first_t(std::size_t j) const { return reverse ? dims.steps - end_k(j) : first_k(j); }
    // Where the states before segment j's first step are kept, or end up after the last segment.
    const T* boundary(std::size_t s, std::size_t j) const {
        return j == segments() ? finals[s].data() : checkpoints[s].data() + j * dims.batch * dims.hidden;
    }
};

std::size_t step_at(std::size_t k, std::size_t steps, bool reverse) { return reverse ? steps - 1 - k : k; }

// The weights as the steps read them: from the cell's tensors in forward, from the op's inputs
// when backward recomputes.
template <class T>
struct StepWeights {
    const T* weight_ih = nullptr;
    const T* bias_ih = nullptr;
    const T* weight_hh = nullptr;
    const T* bias_hh = nullptr;
    const T* weight_second = nullptr;
    std::vector<const T*> units;
};

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

template <class T>
void check_shape(const std::string& op, const char* name, const Tensor<T>& tensor, const Shape& expected) {
    if (!tensor.defined()) throw std::invalid_argument(fmt::format("{}: the cell's {} is missing", op, name));
    if (tensor.shape() != expected)
        throw_shape_error(op, fmt::format("{} has the wrong shape for the cell's layout", name), tensor.shape(), expected);
}

template <class T>
void check_arguments(const std::string& op, const CellWeights<T>& w, const Tensor<T>& input,
                     const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths, Dims& d) {
    const CellLayout& l = d.layout;
    if (input.dim() != 3) throw_shape_error(op, "expects a 3-D input [T, B, input_size]", input.shape());
    if (l.gates == 0 || l.states == 0) throw std::invalid_argument(op + ": the layout needs at least one gate block and one state");
    if (l.recurrent_into_gates && l.recurrent > l.gates)
        throw std::invalid_argument(fmt::format("{}: {} recurrent blocks cannot add to {} gate blocks", op, l.recurrent, l.gates));
    d.steps = input.size(0);
    d.batch = input.size(1);
    d.input = input.size(2);
    if (!w.weight_ih.defined() || w.weight_ih.dim() != 2 || w.weight_ih.size(0) % l.gates != 0)
        throw std::invalid_argument(op + ": weight_ih must be [G*H, input_size]");
    d.hidden = w.weight_ih.size(0) / l.gates;
    const std::size_t H = d.hidden;
    // The largest buffers are [T, B, k*H]: the gates, the separate products, the saved states.
    // Checked before any is sized from these numbers (a product that wraps would make a buffer
    // smaller than the loops that fill it), in bytes, as every tensor's size is.
    const std::size_t widest = std::max({l.gates, l.recurrent, l.second, l.states + l.saved + 1});
    checked_element_count(op, {d.steps, d.batch, widest, H}, sizeof(T));
    check_shape(op, "weight_ih", w.weight_ih, Shape{l.gates * H, d.input});
    if (w.bias_ih.defined()) check_shape(op, "bias_ih", w.bias_ih, Shape{l.gates * H});
    if (l.recurrent > 0) check_shape(op, "weight_hh", w.weight_hh, Shape{l.recurrent * H, H});
    if (w.bias_hh.defined()) check_shape(op, "bias_hh", w.bias_hh, Shape{l.recurrent * H});
    if (l.second > 0) check_shape(op, "weight_second", w.weight_second, Shape{l.second * H, H});
    if (w.units.size() != l.units)
        throw std::invalid_argument(fmt::format("{}: {} per-unit vectors given, the layout has {}", op, w.units.size(), l.units));
    for (const auto& u : w.units) check_shape(op, "per-unit vector", u, Shape{H});
    if (initial_state.size() != l.states)
        throw std::invalid_argument(fmt::format("{}: {} initial state tensors given, expected {}", op,
                                                initial_state.size(), l.states));
    for (const auto& state : initial_state)
        if (state.shape() != Shape{d.batch, H}) throw_shape_error(op, "initial state must be [B, H]", state.shape());
    if (!lengths.empty()) {
        if (lengths.size() != d.batch)
            throw std::invalid_argument(fmt::format("{}: {} lengths for a batch of {}", op, lengths.size(), d.batch));
        for (auto length : lengths)
            if (length < 1 || length > std::int64_t(d.steps))
                throw std::invalid_argument(fmt::format("{}: length {} outside 1..{}", op, length, d.steps));
    }
    if (d.steps == 0 || d.batch == 0) throw_shape_error(op, "needs at least one step and one row", input.shape());
}

// ---- forward ----

// Note: Recomputation. A long sequence's step buffers grow with T (LSTM, B=32, H=256: 196 KB a
// step). With a segment of k steps, forward keeps only the states before each segment and one
// window of k steps; backward walks the segments from last to first, reruns each one's forward
// from its checkpoint into the window (the last segment is still there from forward), then runs
// its backward steps and its share of the weight GEMMs. Memory ~ (T/k + k) steps instead of T
// (k = sqrt(T) at best) for one more forward pass. The rerun repeats the forward's arithmetic
// exactly, so only the weight gradients' summation order (per segment) differs.
//
// Note: Threads. The rows of a batch are independent until the weight gradients sum over them,
// so with blas::num_threads() > 1 the driver splits the batch into row groups, one per thread,
// each running the step loop with its own recurrent GEMMs on its rows (single-threaded GEMMs
// inside the parallel region); the products over all steps stay whole and use the threads
// inside the GEMM. Small multithreaded GEMMs per step lose to thread wake-ups; this does not.

// At least min_rows_per_thread rows per group: smaller GEMMs lose more than a thread gains.
constexpr std::size_t min_rows_per_thread = 4;

std::vector<Rows> split_rows(std::size_t batch, std::size_t threads) {
    const std::size_t groups = std::max<std::size_t>(1, std::min(threads, batch / min_rows_per_thread));
    std::vector<Rows> rows;
    for (std::size_t g = 0; g < groups; ++g) rows.push_back({batch * g / groups, batch * (g + 1) / groups});
    return rows;
}

// Runs work(g) for every group, in parallel when there are several; an exception (a user's rule
// may throw) is carried out of the parallel region and rethrown here.
template <class Work>
void for_each_group(std::size_t groups, Work&& work) {
    if (groups == 1) return work(0);
    std::vector<std::exception_ptr> errors(groups);
#pragma omp parallel for num_threads(int(groups)) schedule(static, 1)
    for (std::size_t g = 0; g < groups; ++g) {
        try {
            work(g);
        } catch (...) {
            errors[g] = std::current_exception();
        }
    }
    for (auto& error : errors)
        if (error) std::rethrow_exception(error);
}

// The step loop of one window for one group of rows: the recurrent GEMMs and the cell's forward
// rules, row by row.
template <class T>
class ForwardSteps {
public:
    ForwardSteps(Saved<T>& saved, const StepWeights<T>& w, Rows rows) : saved_(saved), d_(saved.dims), w_(w), rows_(rows) {
        const CellLayout& l = d_.layout;
        const std::size_t m = rows.count(), H = d_.hidden;
        if (d_.separate()) recurrent_out_ = Buffer<T>(m * d_.recurrent_width());
        if (l.second > 0) second_out_ = Buffer<T>(m * d_.second_width());
        // h W_hh^T every step with the same W_hh: packed once for all steps (gemm.hpp).
        if (l.recurrent > 0)
            recurrent_ = std::make_unique<blas::PackedGemm<T>>(true, m, d_.recurrent_width(), H, w_.weight_hh, H,
                                                               d_.separate() ? T(0) : T(1), H,
                                                               d_.separate() ? d_.recurrent_width() : d_.gate_width(),
                                                               d_.steps);
        if (l.second > 0)
            second_ = std::make_unique<blas::PackedGemm<T>>(true, m, d_.second_width(), H, w_.weight_second, H, T(0), H,
                                                            d_.second_width(), d_.steps);
        state_.resize(l.states);
        next_.resize(l.states);
        extra_.resize(l.saved);
        row_.hidden = H;
        row_.state = state_.data();
        row_.next_state = next_.data();
        row_.saved = extra_.data();
        row_.units = w_.units.data();
    }

    // Segment j's steps, the window already holding its projections and first states; the states
    // after its last step go to `after`, each step's output h to `output` [T, B, H] when given.
    void run(std::size_t j, const std::vector<T*>& after, T* output) {
        const std::size_t B = d_.batch, H = d_.hidden, GH = d_.gate_width(), S = d_.layout.states, b0 = rows_.begin;
        const std::size_t k0 = saved_.first_k(j), k1 = saved_.end_k(j), t0 = saved_.first_t(j);
        for (std::size_t k = k0; k < k1; ++k) {
            const std::size_t t = step_at(k, d_.steps, saved_.reverse), slot = t - t0;
            const bool last = k + 1 == k1;
            const std::size_t next_slot = last ? 0 : step_at(k + 1, d_.steps, saved_.reverse) - t0;
            if (recurrent_)
                recurrent_->operator()(saved_.states[0].data() + (slot * B + b0) * H,
                                       d_.separate() ? recurrent_out_.data() : saved_.gates.data() + (slot * B + b0) * GH);
            for (std::size_t b = b0; b < rows_.end; ++b) {
                point(slot, next_slot, last ? &after : nullptr, b);
                if (saved_.row_active(t, b)) {
                    saved_.rules->forward(row_);
                    continue;
                }
                // A finished row keeps its state; q is zeroed so the dW_2 GEMM reads no garbage.
                for (std::size_t s = 0; s < S; ++s) std::copy_n(state_[s], H, next_[s]);
                if (row_.gated_state) std::fill_n(row_.gated_state, H, T(0));
            }
            if (second_) {
                second_->operator()(saved_.gated.data() + (slot * B + b0) * H, second_out_.data());
                for (std::size_t b = b0; b < rows_.end; ++b)
                    if (saved_.row_active(t, b)) {
                        point(slot, next_slot, last ? &after : nullptr, b);
                        saved_.rules->forward_second(row_);
                    }
            }
            if (!output) continue;
            // The output is h after the step, zeros in finished rows.
            const T* h = last ? after[0] : saved_.states[0].data() + next_slot * B * H;
            T* out = output + t * B * H;
            for (std::size_t b = b0; b < rows_.end; ++b) {
                if (saved_.row_active(t, b)) std::copy_n(h + b * H, H, out + b * H);
                else std::fill_n(out + b * H, H, T(0));
            }
        }
    }

private:
    // Points the row at row b of the window's slot; `after` when the step is the window's last.
    void point(std::size_t slot, std::size_t next_slot, const std::vector<T*>* after, std::size_t b) {
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, local = b - rows_.begin;
        row_.gates = saved_.gates.data() + (slot * B + b) * d_.gate_width();
        for (std::size_t s = 0; s < l.states; ++s) {
            state_[s] = saved_.states[s].data() + (slot * B + b) * H;
            next_[s] = (after ? (*after)[s] : saved_.states[s].data() + next_slot * B * H) + b * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra_[e] = saved_.extra[e].data() + (slot * B + b) * H;
        row_.recurrent = d_.separate() ? recurrent_out_.data() + local * d_.recurrent_width() : nullptr;
        row_.bias_hh = d_.separate() ? w_.bias_hh : nullptr;
        row_.gated_state = l.second > 0 ? saved_.gated.data() + (slot * B + b) * H : nullptr;
        row_.second = l.second > 0 ? second_out_.data() + local * d_.second_width() : nullptr;
    }

    Saved<T>& saved_;
    const Dims& d_;
    const StepWeights<T>& w_;
    Rows rows_;
    Buffer<T> recurrent_out_, second_out_;
    std::unique_ptr<blas::PackedGemm<T>> recurrent_, second_;
    std::vector<const T*> state_;
    std::vector<T*> next_, extra_;
    ForwardRow<T> row_;
};

// One window of the whole batch: the input projections of its steps as one GEMM, then the step
// loop of every row group.
template <class T>
class ForwardPass {
public:
    ForwardPass(Saved<T>& saved, StepWeights<T> w, const T* x, const std::vector<Rows>& groups)
        : saved_(saved), w_(std::move(w)), x_(x) {
        for (const Rows& rows : groups) groups_.push_back(std::make_unique<ForwardSteps<T>>(saved, w_, rows));
    }

    // Segment j from the states `before` (per state [B, H]), as ForwardSteps::run.
    void run(std::size_t j, const std::vector<const T*>& before, const std::vector<T*>& after, T* output) {
        const Dims& d = saved_.dims;
        const std::size_t B = d.batch, H = d.hidden, k0 = saved_.first_k(j), t0 = saved_.first_t(j);
        saved_.window_t0 = t0;
        saved_.window_segment = j;
        project(t0, saved_.end_k(j) - k0);
        const std::size_t first_slot = step_at(k0, d.steps, saved_.reverse) - t0;
        for (std::size_t s = 0; s < d.layout.states; ++s)
            std::copy_n(before[s], B * H, saved_.states[s].data() + first_slot * B * H);
        for_each_group(groups_.size(), [&](std::size_t g) { groups_[g]->run(j, after, output); });
    }

private:
    // The projections of steps [t0, t0 + count), on top of the biases outside the recurrence.
    void project(std::size_t t0, std::size_t count) {
        const Dims& d = saved_.dims;
        const std::size_t rows = count * d.batch, GH = d.gate_width();
        T* gates = saved_.gates.data();
        fill_rows(gates, rows, GH, w_.bias_ih, d.separate() ? nullptr : w_.bias_hh, d.recurrent_width());
        blas::gemm(false, true, rows, GH, d.input, T(1), x_ + t0 * d.batch * d.input, d.input, w_.weight_ih, d.input,
                   T(1), gates, GH);
    }

    Saved<T>& saved_;
    StepWeights<T> w_;
    const T* x_;
    std::vector<std::unique_ptr<ForwardSteps<T>>> groups_;
};

template <class T>
std::vector<xt::xarray<T>> forward(Saved<T>& saved, const CellWeights<T>& w, const T* x,
                                   const std::vector<const T*>& initial) {
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const std::size_t B = d.batch, H = d.hidden, W = saved.segment, S = l.states;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, H});
    std::vector<xt::xarray<T>> finals(S);
    for (auto& f : finals) f = xt::xarray<T>::from_shape({B, H});
    saved.gates = Buffer<T>(W * B * d.gate_width());
    for (std::size_t s = 0; s < S; ++s) saved.states.emplace_back(W * B * H);
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(W * B * H);
    if (l.second > 0) saved.gated = Buffer<T>(W * B * H);

    StepWeights<T> weights{w.weight_ih.value().data(),
                           w.bias_ih.defined() ? w.bias_ih.value().data() : nullptr,
                           l.recurrent > 0 ? w.weight_hh.value().data() : nullptr,
                           w.bias_hh.defined() ? w.bias_hh.value().data() : nullptr,
                           l.second > 0 ? w.weight_second.value().data() : nullptr,
                           {}};
    for (const auto& u : w.units) weights.units.push_back(u.value().data());
    ForwardPass<T> pass(saved, std::move(weights), x, saved.groups);

    std::vector<T*> final_rows(S);
    for (std::size_t s = 0; s < S; ++s) final_rows[s] = finals[s].data();
    if (!saved.recomputing()) {
        pass.run(0, initial, final_rows, output.data());
    } else {
        const std::size_t segments = saved.segments();
        for (std::size_t s = 0; s < S; ++s) {
            saved.checkpoints.emplace_back(segments * B * H);
            std::copy_n(initial[s], B * H, saved.checkpoints[s].data());
        }
        std::vector<const T*> before(S);
        std::vector<T*> after(S);
        for (std::size_t j = 0; j < segments; ++j) {
            for (std::size_t s = 0; s < S; ++s) {
                before[s] = saved.checkpoints[s].data() + j * B * H;
                after[s] = j + 1 == segments ? final_rows[s] : saved.checkpoints[s].data() + (j + 1) * B * H;
            }
            pass.run(j, before, after, output.data());
        }
    }
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * H);
        std::copy_n(finals[s].data(), B * H, saved.finals[s].data());
    }
    if (saved.probe)  // the probe runs without recomputation: the window holds every step
        for (std::size_t s = 0; s < S; ++s) {
            xt::xarray<T> after = xt::xarray<T>::from_shape({d.steps, B, H});
            for (std::size_t k = 0; k < d.steps; ++k) {
                const std::size_t t = step_at(k, d.steps, saved.reverse);
                const T* source = k + 1 == d.steps ? finals[s].data()
                                                   : saved.states[s].data() + step_at(k + 1, d.steps, saved.reverse) * B * H;
                std::copy_n(source, B * H, after.data() + t * B * H);
            }
            saved.probe->states_after.push_back(std::move(after));
        }

    std::vector<xt::xarray<T>> outputs;
    outputs.push_back(std::move(output));
    for (auto& f : finals) outputs.push_back(std::move(f));
    return outputs;
}

// ---- backward ----

// What the row groups' backward step loops share; each writes only its own rows.
template <class T>
struct BackwardShared {
    Saved<T>* saved = nullptr;
    T* grad_gates = nullptr;      // [W, B, G*H]: dL/d(gate pre-activations) of the window's steps
    T* grad_recurrent = nullptr;  // [W, B, R*H] of the separate stage-1 product, or grad_gates
    T* grad_second = nullptr;     // [W, B, R_2*H] of the stage-2 product
    std::vector<T*> grad_state;   // per state [B, H]: dL/d(state after the step being run)
    const T* grad_output = nullptr;
    std::vector<const T*> units;
    const T* weight_hh = nullptr;
    const T* weight_second = nullptr;
    bool need_h0 = false;
};

// The backward step loop of one window for one group of rows.
template <class T>
class BackwardSteps {
public:
    BackwardSteps(const BackwardShared<T>& shared, Rows rows) : sh_(shared), d_(shared.saved->dims), rows_(rows) {
        const CellLayout& l = d_.layout;
        const std::size_t m = rows.count(), H = d_.hidden;
        // dh_{t-1} += dR W_hh and dq = dR_2 W_2 every step: the weights packed once (gemm.hpp).
        if (l.recurrent > 0)
            recurrent_ = std::make_unique<blas::PackedGemm<T>>(false, m, H, d_.recurrent_width(), sh_.weight_hh, H, T(1),
                                                               d_.recurrent_stride(), H, d_.steps);
        if (l.second > 0) {
            second_ = std::make_unique<blas::PackedGemm<T>>(false, m, H, d_.second_width(), sh_.weight_second, H, T(0),
                                                            d_.second_width(), H, d_.steps);
            grad_gated_ = Buffer<T>(m * H);
        }
        for (std::size_t u = 0; u < l.units; ++u) grad_units_.push_back(xt::zeros<T>({H}));
        for (auto& g : grad_units_) grad_unit_ptrs_.push_back(g.data());
        state_.resize(l.states);
        next_.resize(l.states);
        extra_.resize(l.saved);
        dstate_.resize(l.states);
        row_.hidden = H;
        row_.state = state_.data();
        row_.next_state = next_.data();
        row_.saved = extra_.data();
        row_.units = sh_.units.data();
        row_.grad_state = dstate_.data();
        row_.grad_units = grad_unit_ptrs_.data();
    }

    // Segment j's steps from last to first; `after` holds the states after its last step.
    void run(std::size_t j, const std::vector<const T*>& after) {
        const Saved<T>& saved = *sh_.saved;
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, GH = d_.gate_width(), b0 = rows_.begin;
        const std::size_t k0 = saved.first_k(j), k1 = saved.end_k(j), t0 = saved.first_t(j);
        for (std::size_t k = k1; k-- > k0;) {
            const std::size_t t = step_at(k, d_.steps, saved.reverse), slot = t - t0;
            const bool last = k + 1 == k1;
            const std::size_t next_slot = last ? 0 : step_at(k + 1, d_.steps, saved.reverse) - t0;
            const T* const* after_step = last ? after.data() : nullptr;
            for (std::size_t b = b0; b < rows_.end; ++b) {
                point(slot, next_slot, after_step, b);
                if (saved.row_active(t, b)) {
                    if (sh_.grad_output) {
                        const T* dout = sh_.grad_output + (t * B + b) * H;
                        T* dh = dstate_[0];
                        lanes<T>(H, [&](std::size_t i, auto tag) {
                            using V = decltype(tag);
                            store_lane(dh + i, load_lane<V>(dh + i) + load_lane<V>(dout + i));
                        });
                    }
                    if (l.second > 0) saved.rules->backward_second(row_);
                    continue;
                }
                // A finished row: the state gradients pass through unchanged, nothing reaches the weights.
                std::fill_n(row_.grad_gates, GH, T(0));
                if (row_.grad_recurrent) std::fill_n(row_.grad_recurrent, d_.recurrent_width(), T(0));
                if (row_.grad_second) std::fill_n(row_.grad_second, d_.second_width(), T(0));
            }
            if (second_)
                second_->operator()(sh_.grad_second + (slot * B + b0) * d_.second_width(), grad_gated_.data());
            for (std::size_t b = b0; b < rows_.end; ++b)
                if (saved.row_active(t, b)) {
                    point(slot, next_slot, after_step, b);
                    saved.rules->backward(row_);
                }
            // dh_{t-1} += dR W_hh; after the first step only the initial state's gradient would remain.
            if (recurrent_ && (k > 0 || sh_.need_h0 || saved.probe))
                recurrent_->operator()(sh_.grad_recurrent + (slot * B + b0) * d_.recurrent_stride(),
                                       sh_.grad_state[0] + b0 * H);
            if (saved.probe)
                for (std::size_t s = 0; s < l.states; ++s)
                    std::copy_n(sh_.grad_state[s] + b0 * H, rows_.count() * H,
                                saved.probe->grad_states_before[s].data() + (t * B + b0) * H);
        }
    }

    // This group's sums for the per-unit vectors.
    const std::vector<xt::xarray<T>>& grad_units() const { return grad_units_; }

private:
    // Row b of the window's slot; `after` holds the states after the window's last step.
    void point(std::size_t slot, std::size_t next_slot, const T* const* after, std::size_t b) {
        const Saved<T>& saved = *sh_.saved;
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, at = slot * B + b;
        row_.gates = saved.gates.data() + at * d_.gate_width();
        for (std::size_t s = 0; s < l.states; ++s) {
            state_[s] = saved.states[s].data() + at * H;
            next_[s] = (after ? after[s] : saved.states[s].data() + next_slot * B * H) + b * H;
            dstate_[s] = sh_.grad_state[s] + b * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra_[e] = saved.extra[e].data() + at * H;
        row_.grad_gates = sh_.grad_gates + at * d_.gate_width();
        row_.grad_recurrent = d_.separate() ? sh_.grad_recurrent + at * d_.recurrent_width() : nullptr;
        row_.gated_state = l.second > 0 ? saved.gated.data() + at * H : nullptr;
        row_.grad_second = l.second > 0 ? sh_.grad_second + at * d_.second_width() : nullptr;
        row_.grad_gated_state = l.second > 0 ? grad_gated_.data() + (b - rows_.begin) * H : nullptr;
    }

    const BackwardShared<T>& sh_;
    const Dims& d_;
    Rows rows_;
    std::unique_ptr<blas::PackedGemm<T>> recurrent_, second_;
    Buffer<T> grad_gated_;  // dq = dR_2 W_2 of this group's rows
    std::vector<xt::xarray<T>> grad_units_;
    std::vector<T*> grad_unit_ptrs_;
    std::vector<const T*> state_, next_, extra_;
    std::vector<T*> dstate_;
    BackwardRow<T> row_;
};

template <class T>
Gradients<T> backward(Saved<T>& saved, const BackwardContext<T>& ctx) {
    if (ctx.create_graph())
        throw GraphError(fmt::format(
            "backward of '{}' with create_graph=true: the fused recurrent kernel's backward is hand-written and "
            "cannot be differentiated again; run the layer on the generic path "
            "(layer.set_path(rw::nn::ExecutionPath::generic)) for higher-order gradients",
            ctx.op_name()));
    const Dims& d = saved.dims;
    const CellLayout& l = d.layout;
    const InputIndex& in = saved.index;
    const std::size_t B = d.batch, H = d.hidden, GH = d.gate_width(), I = d.input, S = l.states;
    const std::size_t WB = saved.segment * B, RH = d.recurrent_width(), R2H = d.second_width();
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();

    if (saved.probe) {
        saved.probe->grad_states_before.assign(S, xt::xarray<T>::from_shape({d.steps, B, H}));
        saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, B, GH});
    }
    BackwardShared<T> shared;
    shared.saved = &saved;
    std::vector<xt::xarray<T>> grad_state(S);
    for (std::size_t s = 0; s < S; ++s) {
        grad_state[s] = xt::xarray<T>::from_shape({B, H});
        if (ctx.has_grad_output(1 + s)) std::copy_n(ctx.grad_output(1 + s).value().data(), B * H, grad_state[s].data());
        else std::fill_n(grad_state[s].data(), B * H, T(0));
        shared.grad_state.push_back(grad_state[s].data());
    }
    shared.grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;
    for (std::size_t s = 0; s < S; ++s) shared.need_h0 = shared.need_h0 || ctx.needs_input_grad(in.states + s);

    Buffer<T> grad_gates(WB * GH), grad_recurrent, grad_second;
    if (d.separate()) grad_recurrent = Buffer<T>(WB * RH);
    if (l.second > 0) grad_second = Buffer<T>(WB * R2H);
    T* dgx = grad_gates.data();
    T* dgh = d.separate() ? grad_recurrent.data() : dgx;
    shared.grad_gates = dgx;
    shared.grad_recurrent = dgh;
    shared.grad_second = grad_second.data();
    for (std::size_t u = 0; u < l.units; ++u) shared.units.push_back(ctx.input(in.units + u).value().data());
    shared.weight_hh = in.weight_hh >= 0 ? ctx.input(in.weight_hh).value().data() : nullptr;
    shared.weight_second = in.weight_second >= 0 ? ctx.input(in.weight_second).value().data() : nullptr;
    std::vector<std::unique_ptr<BackwardSteps<T>>> groups;
    for (const Rows& rows : saved.groups) groups.push_back(std::make_unique<BackwardSteps<T>>(shared, rows));

    // Reruns a segment's forward into the window (note: Recomputation).
    std::unique_ptr<ForwardPass<T>> rerun;
    std::vector<Buffer<T>> rerun_after;
    if (saved.recomputing()) {
        StepWeights<T> weights{w_ih,
                               in.bias_ih >= 0 ? ctx.input(in.bias_ih).value().data() : nullptr,
                               shared.weight_hh,
                               in.bias_hh >= 0 ? ctx.input(in.bias_hh).value().data() : nullptr,
                               shared.weight_second,
                               shared.units};
        rerun = std::make_unique<ForwardPass<T>>(saved, std::move(weights), x, saved.groups);
        for (std::size_t s = 0; s < S; ++s) rerun_after.emplace_back(B * H);
    }

    // The weight gradients, summed over the segments' GEMMs (one segment without recomputation).
    auto maybe = [&](int index, Shape shape) {
        return index >= 0 && ctx.needs_input_grad(index) ? xt::xarray<T>::from_shape(shape) : xt::xarray<T>();
    };
    auto wanted = [](const xt::xarray<T>& gradient) { return gradient.dimension() > 0; };  // 0-D: not asked for
    const bool want_dx = ctx.needs_input_grad(in.x);
    xt::xarray<T> dx = want_dx ? xt::xarray<T>::from_shape({d.steps, B, I}) : xt::xarray<T>();
    xt::xarray<T> dw_ih = maybe(in.weight_ih, {GH, I}), db_ih = maybe(in.bias_ih, {GH});
    xt::xarray<T> dw_hh = maybe(in.weight_hh, {RH, H}), db_hh = maybe(in.bias_hh, {RH});
    xt::xarray<T> dw_2 = maybe(in.weight_second, {R2H, H});
    // b_hh adds to the same pre-activations as b_ih: same gradient, summed once.
    const bool db_hh_is_db_ih = !d.separate() && RH == GH && wanted(db_ih);
    Buffer<T> sums(std::max(GH, RH));

    std::vector<const T*> after(S);
    for (std::size_t j = saved.segments(); j-- > 0;) {
        if (saved.window_segment != j) {
            std::vector<const T*> before(S);
            std::vector<T*> scratch(S);
            for (std::size_t s = 0; s < S; ++s) {
                before[s] = saved.boundary(s, j);
                scratch[s] = rerun_after[s].data();
            }
            rerun->run(j, before, scratch, nullptr);
        }
        for (std::size_t s = 0; s < S; ++s) after[s] = saved.boundary(s, j + 1);
        const std::size_t k0 = saved.first_k(j), k1 = saved.end_k(j), t0 = saved.first_t(j), rows = (k1 - k0) * B;
        for_each_group(groups.size(), [&](std::size_t g) { groups[g]->run(j, after); });
        if (saved.probe) std::copy_n(dgx, rows * GH, saved.probe->grad_gates.data() + t0 * B * GH);

        // This segment's share of the products over all steps; the first segment done sets them.
        const T beta = j + 1 == saved.segments() ? T(0) : T(1);
        const T* x_rows = x + t0 * B * I;
        if (want_dx) blas::gemm(false, false, rows, I, GH, T(1), dgx, GH, w_ih, I, T(0), dx.data() + t0 * B * I, I);
        if (wanted(dw_ih)) blas::gemm(true, false, GH, I, rows, T(1), dgx, GH, x_rows, I, beta, dw_ih.data(), I);
        if (wanted(db_ih)) column_sums(dgx, rows, GH, GH, beta != T(0), db_ih.data(), sums.data());
        if (wanted(dw_hh))
            blas::gemm(true, false, RH, H, rows, T(1), dgh, d.recurrent_stride(), saved.states[0].data(), H, beta,
                       dw_hh.data(), H);
        if (wanted(db_hh) && !db_hh_is_db_ih)
            column_sums(dgh, rows, RH, d.recurrent_stride(), beta != T(0), db_hh.data(), sums.data());
        if (wanted(dw_2))
            blas::gemm(true, false, R2H, H, rows, T(1), grad_second.data(), R2H, saved.gated.data(), H, beta, dw_2.data(), H);
    }
    if (db_hh_is_db_ih && wanted(db_hh)) db_hh = db_ih;

    Gradients<T> gradients(ctx.num_inputs());
    auto give = [&](int index, xt::xarray<T>& value) {
        if (index >= 0 && wanted(value)) gradients[index] = Tensor<T>(std::move(value));
    };
    give(in.x, dx);
    give(in.weight_ih, dw_ih);
    give(in.bias_ih, db_ih);
    give(in.weight_hh, dw_hh);
    give(in.bias_hh, db_hh);
    give(in.weight_second, dw_2);
    for (std::size_t u = 0; u < l.units; ++u)
        if (ctx.needs_input_grad(in.units + u)) {
            xt::xarray<T> sum = groups[0]->grad_units()[u];
            for (std::size_t g = 1; g < groups.size(); ++g) sum += groups[g]->grad_units()[u];
            gradients[in.units + u] = Tensor<T>(std::move(sum));
        }
    for (std::size_t s = 0; s < S; ++s)
        if (ctx.needs_input_grad(in.states + s)) gradients[in.states + s] = Tensor<T>(std::move(grad_state[s]));
    return gradients;
}

}  // namespace

template <class T>
SequenceResult<T> detail::run_sequence_probed(const CellRules<T>& rules, const Tensor<T>& input,
                                              const std::vector<Tensor<T>>& initial_state,
                                              const std::vector<std::int64_t>& lengths, bool reverse,
                                              const std::string& name, std::shared_ptr<SequenceProbe<T>> probe,
                                              std::shared_ptr<const void> owner, std::size_t segment) {
    auto saved = std::make_shared<Saved<T>>();
    saved->owner = std::move(owner);
    saved->probe = std::move(probe);
    saved->rules = &rules;
    saved->reverse = reverse;
    saved->dims.layout = rules.layout();
    const CellWeights<T> w = rules.weights();
    const std::string op = "fused_" + (name.empty() ? std::string("cell") : name);
    check_arguments(op, w, input, initial_state, lengths, saved->dims);
    const Dims& d = saved->dims;
    // The probe reads every step's buffers after the forward: it runs without recomputation.
    saved->segment = segment == 0 || segment > d.steps || saved->probe ? d.steps : segment;
    // The probe's step records are written by one thread (note: Threads).
    saved->groups = split_rows(d.batch, saved->probe ? 1 : std::size_t(std::max(1, blas::num_threads())));
    if (!lengths.empty()) {
        bool any_short = false;
        for (auto length : lengths) any_short = any_short || length < std::int64_t(d.steps);
        if (any_short) {
            saved->active.resize(d.steps * d.batch);
            saved->all_active.resize(d.steps);
            for (std::size_t t = 0; t < d.steps; ++t) {
                bool all = true;
                for (std::size_t b = 0; b < d.batch; ++b) {
                    const bool on = std::int64_t(t) < lengths[b];
                    saved->active[t * d.batch + b] = on;
                    all = all && on;
                }
                saved->all_active[t] = all;
            }
        }
    }

    std::vector<const T*> initial;
    for (const auto& s : initial_state) initial.push_back(s.value().data());
    auto values = forward(*saved, w, input.value().data(), initial);

    // The op's inputs: x, then the weights the layout uses, the per-unit vectors, the initial states.
    InputIndex& index = saved->index;
    std::vector<Tensor<T>> inputs{input, w.weight_ih};
    auto add_input = [&](const Tensor<T>& tensor) {
        inputs.push_back(tensor);
        return int(inputs.size()) - 1;
    };
    if (w.bias_ih.defined()) index.bias_ih = add_input(w.bias_ih);
    if (d.layout.recurrent > 0) index.weight_hh = add_input(w.weight_hh);
    if (w.bias_hh.defined()) index.bias_hh = add_input(w.bias_hh);
    if (d.layout.second > 0) index.weight_second = add_input(w.weight_second);
    index.units = int(inputs.size());
    for (const auto& u : w.units) add_input(u);
    index.states = int(inputs.size());
    for (const auto& s : initial_state) add_input(s);
    // The rules live in the cell; `owner` (the cell, when the layer runs it) keeps them alive.
    auto outputs = record_op<T>(op + (reverse ? "_reverse" : ""), std::move(inputs), std::move(values),
                                [saved](const BackwardContext<T>& ctx) -> Gradients<T> { return backward(*saved, ctx); });
    SequenceResult<T> result;
    result.output = outputs[0];
    result.final_state.assign(outputs.begin() + 1, outputs.end());
    return result;
}

template <class T>
SequenceResult<T> run_sequence(const CellRules<T>& rules, const Tensor<T>& input, const std::vector<Tensor<T>>& initial_state,
                               const std::vector<std::int64_t>& lengths, bool reverse, const std::string& name,
                               std::size_t recompute_segment) {
    return detail::run_sequence_probed<T>(rules, input, initial_state, lengths, reverse, name, nullptr, nullptr,
                                          recompute_segment);
}

std::size_t row_groups(std::size_t batch) {
    return split_rows(batch, std::size_t(std::max(1, blas::num_threads()))).size();
}

DriverMemory driver_memory() { return {live_bytes.load(), peak_bytes.load()}; }

void reset_driver_memory_peak() { peak_bytes.store(live_bytes.load()); }

template class CellRules<float>;
template class CellRules<double>;
template SequenceResult<float> detail::run_sequence_probed(const CellRules<float>&, const Tensor<float>&,
                                                           const std::vector<Tensor<float>>&,
                                                           const std::vector<std::int64_t>&, bool, const std::string&,
                                                           std::shared_ptr<detail::SequenceProbe<float>>,
                                                           std::shared_ptr<const void>, std::size_t);
template SequenceResult<double> detail::run_sequence_probed(const CellRules<double>&, const Tensor<double>&,
                                                            const std::vector<Tensor<double>>&,
                                                            const std::vector<std::int64_t>&, bool, const std::string&,
                                                            std::shared_ptr<detail::SequenceProbe<double>>,
                                                            std::shared_ptr<const void>, std::size_t);
template SequenceResult<float> run_sequence(const CellRules<float>&, const Tensor<float>&, const std::vector<Tensor<float>>&,
                                            const std::vector<std::int64_t>&, bool, const std::string&, std::size_t);
template SequenceResult<double> run_sequence(const CellRules<double>&, const Tensor<double>&,
                                             const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&, bool,
                                             const std::string&, std::size_t);

}  // namespace rw::nn::fused
