#pragma once
// Private to the fused driver (sequence.cpp): what forward keeps for backward (the window of
// step buffers, the checkpoints of recomputation), the weights as the steps read them, and the
// batch's row groups on threads.

#include <algorithm>
#include <exception>
#include <memory>
#include <vector>

#include "driver.hpp"
#include "probe.hpp"

namespace rw::nn::fused::driver {

template <class T>
struct ForwardTangents;  // tangent.hpp

// Everything the backward needs besides the op's inputs. The step buffers form a window over
// the steps, in time order (slot t - window_t0 is step t whatever the direction): all of them,
// or one segment of `segment` steps when recomputing (Note [Recomputation]).
template <class T>
struct Saved {
    const CellRules<T>* rules = nullptr;
    std::shared_ptr<const void> owner;  // keeps `rules` alive while the graph is
    Dims dims;
    InputIndex index;
    bool reverse = false;
    std::size_t segment = 0;          // steps per window: dims.steps unless recomputing or inferring
    bool inference = false;           // nothing recorded: states in two slots, step buffers in one (Note [Inference])
    Buffer<T> gates;                  // [W, B, G*H] as the forward rule left them
    std::vector<Buffer<T>> states;    // per state: [W, B, width] before step t
    std::vector<Buffer<T>> finals;    // per state: [B, width] after the last processed step
    std::vector<Buffer<T>> extra;     // per saved buffer: [W, B, H]
    Buffer<T> gated;                  // two-stage: q [W, B, H]
    Buffer<T> unprojected;            // projection: m [W, B, H], zeros in finished rows
    std::vector<Buffer<T>> checkpoints;  // recomputing: per state [segments, B, width], before each segment
    std::size_t window_t0 = 0;           // the first step the window holds
    std::size_t window_segment = 0;      // which segment it holds
    std::vector<Rows> groups;            // the batch's row groups, one per thread (Note [Threads])
    std::vector<std::uint8_t> active;  // [T, B], empty when every row runs every step
    std::vector<bool> all_active;      // per step
    std::shared_ptr<detail::SequenceProbe<T>> probe;  // null unless checking
    // The last forward tangent sweep and the tangents it went along (Note [Forward sweep kept], tangent.cpp).
    std::shared_ptr<ForwardTangents<T>> forward_sweep;
    std::vector<Tensor<T>> forward_sweep_along;

    bool row_active(std::size_t t, std::size_t b) const {
        return active.empty() || all_active[t] || active[t * dims.batch + b];
    }
    std::size_t segments() const { return (dims.steps + segment - 1) / segment; }
    bool recomputing() const { return !inference && segments() > 1; }
    // The slot of the states before the step in window slot `slot`, and of its per-step buffers
    // (the saved ones, q, m): the step's own slot when kept for backward.
    std::size_t state_slot(std::size_t slot) const { return inference ? slot % 2 : slot; }
    std::size_t step_slot(std::size_t slot) const { return inference ? 0 : slot; }
    // Segment j covers the processing positions k in [first_k(j), end_k(j)).
    std::size_t first_k(std::size_t j) const { return j * segment; }
    std::size_t end_k(std::size_t j) const { return std::min(dims.steps, (j + 1) * segment); }
    // The lowest step t of segment j (its last in the reverse direction).
    std::size_t first_t(std::size_t j) const { return reverse ? dims.steps - end_k(j) : first_k(j); }
    // Where the states before segment j's first step are kept, or end up after the last segment.
    const T* boundary(std::size_t s, std::size_t j) const {
        return j == segments() ? finals[s].data() : checkpoints[s].data() + j * dims.batch * dims.width(s);
    }
};

// The weights as the steps read them: from the cell's tensors in forward, from the op's inputs
// when backward recomputes.
template <class T>
struct StepWeights {
    const T* weight_ih = nullptr;
    const T* bias_ih = nullptr;
    const T* weight_hh = nullptr;
    const T* bias_hh = nullptr;
    const T* weight_second = nullptr;
    const T* weight_projection = nullptr;
    std::vector<const T*> units;
};


// Note [Recomputation]: a long sequence's step buffers grow with T (LSTM, B=32, H=256: 196 KB a
// step). With a segment of k steps, forward keeps only the states before each segment and one
// window of k steps; backward walks the segments from last to first, reruns each one's forward
// from its checkpoint into the window (the last segment is still there from forward), then runs
// its backward steps and its share of the weight GEMMs. Memory ~ (T/k + k) steps instead of T
// (k = sqrt(T) at best) for one more forward pass. The rerun repeats the forward's arithmetic
// exactly, so only the weight gradients' summation order (per segment) differs.
//
// Note [Inference]: with nothing to record (no_grad, or no input requiring a gradient) the
// forward keeps nothing for a backward. It runs in windows of inference_rows / B steps (at least
// one): the input projections of a window are one GEMM of about inference_rows rows (one GEMM
// over all T steps would grow with T; one per step would stream W_ih T times), the states
// alternate between two slots (not one: a finished row's projected h is copied from the state
// before the step after the projection overwrote the slot, and a user's rule may read other units
// of the state than it writes), the per-step buffers (saved, q, m) live for one step, and the
// states after a window go straight to the final states, where the next window starts from.
// The arithmetic of every step is the recorded forward's; only the projection GEMM's row count
// differs, so outputs agree to round-off (bit for bit where the GEMM's sums do not depend on M).
constexpr std::size_t inference_rows = 256;

inline std::size_t inference_segment(std::size_t steps, std::size_t batch) {
    return std::max<std::size_t>(1, std::min(steps, inference_rows / std::max<std::size_t>(batch, 1)));
}

// Note [Threads]: the rows of a batch are independent until the weight gradients sum over them,
// so with blas::num_threads() > 1 the driver splits the batch into row groups, one per thread,
// each running the step loop with its own recurrent GEMMs on its rows (single-threaded GEMMs
// inside the parallel region); the products over all steps stay whole and use the threads
// inside the GEMM. Small multithreaded GEMMs per step lose to thread wake-ups; this does not.

// At least min_rows_per_thread rows per group: smaller GEMMs lose more than a thread gains.
constexpr std::size_t min_rows_per_thread = 4;

inline std::vector<Rows> split_rows(std::size_t batch, std::size_t threads) {
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

}  // namespace rw::nn::fused::driver
