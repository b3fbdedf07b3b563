// The one fused sequence driver: the GEMMs, the step loops of forward and backward, lengths,
// recomputation, row groups on threads, the saved buffers and the tape op around a cell's
// point-wise rules (cell_rules.hpp).

#include <atomic>
#include <exception>
#include <memory>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "driver.hpp"
#include "probe.hpp"
#include "rewind/nn/layers/cell.hpp"

namespace rw::nn::fused {

namespace driver {

namespace {
std::atomic<std::size_t> live_bytes{0}, peak_bytes{0};
}  // namespace

void count_allocation(std::size_t bytes) {
    const std::size_t now = live_bytes.fetch_add(bytes) + bytes;
    std::size_t peak = peak_bytes.load();
    while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {}
}

void count_release(std::size_t bytes) { live_bytes.fetch_sub(bytes); }

}  // namespace driver

using namespace driver;

namespace {

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
    std::vector<Buffer<T>> states;    // per state: [W, B, width] before step t
    std::vector<Buffer<T>> finals;    // per state: [B, width] after the last processed step
    std::vector<Buffer<T>> extra;     // per saved buffer: [W, B, H]
    Buffer<T> gated;                  // two-stage: q [W, B, H]
    Buffer<T> unprojected;            // projection: m [W, B, H], zeros in finished rows
    std::vector<Buffer<T>> checkpoints;  // recomputing: per state [segments, B, width], before each segment
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
        const std::size_t m = rows.count(), H = d_.hidden, P = d_.output;
        if (d_.separate()) recurrent_out_ = Buffer<T>(m * d_.recurrent_width());
        if (l.second > 0) second_out_ = Buffer<T>(m * d_.second_width());
        // h W_hh^T every step with the same W_hh (and m W_proj^T): packed once for all steps (gemm.hpp).
        if (l.recurrent > 0)
            recurrent_ = std::make_unique<blas::PackedGemm<T>>(true, m, d_.recurrent_width(), P, w_.weight_hh, P,
                                                               d_.separate() ? T(0) : T(1), P,
                                                               d_.separate() ? d_.recurrent_width() : d_.gate_width(),
                                                               d_.steps);
        if (l.second > 0)
            second_ = std::make_unique<blas::PackedGemm<T>>(true, m, d_.second_width(), H, w_.weight_second, H, T(0), H,
                                                            d_.second_width(), d_.steps);
        if (l.projection)
            projection_ = std::make_unique<blas::PackedGemm<T>>(true, m, P, H, w_.weight_projection, H, T(0), H, P,
                                                                d_.steps);
        state_.resize(l.states);
        next_.resize(l.states);
        extra_.resize(l.saved);
        row_.hidden = H;
        row_.output = P;
        row_.state = state_.data();
        row_.next_state = next_.data();
        row_.saved = extra_.data();
        row_.units = w_.units.data();
    }

    // Segment j's steps, the window already holding its projections and first states; the states
    // after its last step go to `after`, each step's output h to `output` [T, B, P] when given.
    void run(std::size_t j, const std::vector<T*>& after, T* output) {
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, P = d_.output, GH = d_.gate_width(), b0 = rows_.begin;
        const std::size_t k0 = saved_.first_k(j), k1 = saved_.end_k(j), t0 = saved_.first_t(j);
        for (std::size_t k = k0; k < k1; ++k) {
            const std::size_t t = step_at(k, d_.steps, saved_.reverse), slot = t - t0;
            const bool last = k + 1 == k1;
            const std::size_t next_slot = last ? 0 : step_at(k + 1, d_.steps, saved_.reverse) - t0;
            const T* h_before = saved_.states[0].data() + slot * B * P;
            T* h_after = last ? after[0] : saved_.states[0].data() + next_slot * B * P;
            if (recurrent_)
                recurrent_->operator()(h_before + b0 * P,
                                       d_.separate() ? recurrent_out_.data() : saved_.gates.data() + (slot * B + b0) * GH);
            for (std::size_t b = b0; b < rows_.end; ++b) {
                point(slot, next_slot, last ? &after : nullptr, b);
                if (saved_.row_active(t, b)) {
                    saved_.rules->forward(row_);
                    continue;
                }
                // A finished row keeps its state (a projected h after the projection below); q and m
                // are zeroed so the dW_2 and dW_proj GEMMs read no garbage.
                for (std::size_t s = l.projection ? 1 : 0; s < l.states; ++s) std::copy_n(state_[s], d_.width(s), next_[s]);
                if (row_.gated_state) std::fill_n(row_.gated_state, H, T(0));
                if (l.projection) std::fill_n(next_[0], H, T(0));
            }
            if (second_) {
                second_->operator()(saved_.gated.data() + (slot * B + b0) * H, second_out_.data());
                for (std::size_t b = b0; b < rows_.end; ++b)
                    if (saved_.row_active(t, b)) {
                        point(slot, next_slot, last ? &after : nullptr, b);
                        saved_.rules->forward_second(row_);
                    }
            }
            if (projection_) {
                projection_->operator()(saved_.unprojected.data() + (slot * B + b0) * H, h_after + b0 * P);
                for (std::size_t b = b0; b < rows_.end; ++b)
                    if (!saved_.row_active(t, b)) std::copy_n(h_before + b * P, P, h_after + b * P);
            }
            if (!output) continue;
            // The output is h after the step, zeros in finished rows.
            T* out = output + t * B * P;
            for (std::size_t b = b0; b < rows_.end; ++b) {
                if (saved_.row_active(t, b)) std::copy_n(h_after + b * P, P, out + b * P);
                else std::fill_n(out + b * P, P, T(0));
            }
        }
    }

private:
    // Points the row at row b of the window's slot; `after` when the step is the window's last.
    void point(std::size_t slot, std::size_t next_slot, const std::vector<T*>* after, std::size_t b) {
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, local = b - rows_.begin, at = slot * B + b;
        row_.gates = saved_.gates.data() + at * d_.gate_width();
        for (std::size_t s = 0; s < l.states; ++s) {
            const std::size_t W = d_.width(s);
            state_[s] = saved_.states[s].data() + at * W;
            next_[s] = (after ? (*after)[s] : saved_.states[s].data() + next_slot * B * W) + b * W;
        }
        if (l.projection) {  // the rule sees no h and writes m; the group projects it (cell_rules.hpp)
            state_[0] = nullptr;
            next_[0] = saved_.unprojected.data() + at * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra_[e] = saved_.extra[e].data() + at * H;
        row_.recurrent = d_.separate() ? recurrent_out_.data() + local * d_.recurrent_width() : nullptr;
        row_.bias_hh = d_.separate() ? w_.bias_hh : nullptr;
        row_.gated_state = l.second > 0 ? saved_.gated.data() + at * H : nullptr;
        row_.second = l.second > 0 ? second_out_.data() + local * d_.second_width() : nullptr;
    }

    Saved<T>& saved_;
    const Dims& d_;
    const StepWeights<T>& w_;
    Rows rows_;
    Buffer<T> recurrent_out_, second_out_;
    std::unique_ptr<blas::PackedGemm<T>> recurrent_, second_, projection_;
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

    // Segment j from the states `before` (per state [B, width]), as ForwardSteps::run.
    void run(std::size_t j, const std::vector<const T*>& before, const std::vector<T*>& after, T* output) {
        const Dims& d = saved_.dims;
        const std::size_t B = d.batch, k0 = saved_.first_k(j), t0 = saved_.first_t(j);
        saved_.window_t0 = t0;
        saved_.window_segment = j;
        project(t0, saved_.end_k(j) - k0);
        const std::size_t first_slot = step_at(k0, d.steps, saved_.reverse) - t0;
        for (std::size_t s = 0; s < d.layout.states; ++s)
            std::copy_n(before[s], B * d.width(s), saved_.states[s].data() + first_slot * B * d.width(s));
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
    const std::size_t B = d.batch, H = d.hidden, P = d.output, W = saved.segment, S = l.states;

    xt::xarray<T> output = xt::xarray<T>::from_shape({d.steps, B, P});
    std::vector<xt::xarray<T>> finals(S);
    for (std::size_t s = 0; s < S; ++s) finals[s] = xt::xarray<T>::from_shape({B, d.width(s)});
    saved.gates = Buffer<T>(W * B * d.gate_width());
    for (std::size_t s = 0; s < S; ++s) saved.states.emplace_back(W * B * d.width(s));
    for (std::size_t e = 0; e < l.saved; ++e) saved.extra.emplace_back(W * B * H);
    if (l.second > 0) saved.gated = Buffer<T>(W * B * H);
    if (l.projection) saved.unprojected = Buffer<T>(W * B * H);

    StepWeights<T> weights{w.weight_ih.value().data(),
                           w.bias_ih.defined() ? w.bias_ih.value().data() : nullptr,
                           l.recurrent > 0 ? w.weight_hh.value().data() : nullptr,
                           w.bias_hh.defined() ? w.bias_hh.value().data() : nullptr,
                           l.second > 0 ? w.weight_second.value().data() : nullptr,
                           l.projection ? w.weight_projection.value().data() : nullptr,
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
            saved.checkpoints.emplace_back(segments * B * d.width(s));
            std::copy_n(initial[s], B * d.width(s), saved.checkpoints[s].data());
        }
        std::vector<const T*> before(S);
        std::vector<T*> after(S);
        for (std::size_t j = 0; j < segments; ++j) {
            for (std::size_t s = 0; s < S; ++s) {
                const std::size_t stride = B * d.width(s);
                before[s] = saved.checkpoints[s].data() + j * stride;
                after[s] = j + 1 == segments ? final_rows[s] : saved.checkpoints[s].data() + (j + 1) * stride;
            }
            pass.run(j, before, after, output.data());
        }
    }
    for (std::size_t s = 0; s < S; ++s) {
        saved.finals.emplace_back(B * d.width(s));
        std::copy_n(finals[s].data(), B * d.width(s), saved.finals[s].data());
    }
    if (saved.probe)  // the probe runs without recomputation: the window holds every step
        for (std::size_t s = 0; s < S; ++s) {
            const std::size_t Ws = d.width(s);
            xt::xarray<T> states_after = xt::xarray<T>::from_shape({d.steps, B, Ws});
            for (std::size_t k = 0; k < d.steps; ++k) {
                const std::size_t t = step_at(k, d.steps, saved.reverse);
                const T* source = k + 1 == d.steps ? finals[s].data()
                                                   : saved.states[s].data() + step_at(k + 1, d.steps, saved.reverse) * B * Ws;
                std::copy_n(source, B * Ws, states_after.data() + t * B * Ws);
            }
            saved.probe->states_after.push_back(std::move(states_after));
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
    T* grad_projected = nullptr;  // [W, B, P]: dh' of the window's steps (zeros in finished rows)
    std::vector<T*> grad_state;   // per state [B, width]: dL/d(state after the step being run)
    const T* grad_output = nullptr;
    std::vector<const T*> units;
    const T* weight_hh = nullptr;
    const T* weight_second = nullptr;
    const T* weight_projection = nullptr;
    bool need_h0 = false;
};

// The backward step loop of one window for one group of rows.
template <class T>
class BackwardSteps {
public:
    BackwardSteps(const BackwardShared<T>& shared, Rows rows) : sh_(shared), d_(shared.saved->dims), rows_(rows) {
        const CellLayout& l = d_.layout;
        const std::size_t m = rows.count(), H = d_.hidden, P = d_.output;
        // dh_{t-1} += dR W_hh, dq = dR_2 W_2 and dm = dh' W_proj every step: the weights packed once (gemm.hpp).
        if (l.recurrent > 0)
            recurrent_ = std::make_unique<blas::PackedGemm<T>>(false, m, P, d_.recurrent_width(), sh_.weight_hh, P, T(1),
                                                               d_.recurrent_stride(), P, d_.steps);
        if (l.second > 0) {
            second_ = std::make_unique<blas::PackedGemm<T>>(false, m, H, d_.second_width(), sh_.weight_second, H, T(0),
                                                            d_.second_width(), H, d_.steps);
            grad_gated_ = Buffer<T>(m * H);
        }
        if (l.projection) {
            projection_ = std::make_unique<blas::PackedGemm<T>>(false, m, H, P, sh_.weight_projection, H, T(0), P, H,
                                                                d_.steps);
            grad_unprojected_ = Buffer<T>(m * H);
        }
        for (std::size_t u = 0; u < l.units; ++u) grad_units_.push_back(xt::zeros<T>({H}));
        for (auto& g : grad_units_) grad_unit_ptrs_.push_back(g.data());
        state_.resize(l.states);
        next_.resize(l.states);
        extra_.resize(l.saved);
        dstate_.resize(l.states);
        row_.hidden = H;
        row_.output = P;
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
        const std::size_t B = d_.batch, P = d_.output, GH = d_.gate_width(), b0 = rows_.begin;
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
                        const T* dout = sh_.grad_output + (t * B + b) * P;
                        T* dh = sh_.grad_state[0] + b * P;
                        lanes<T>(P, [&](std::size_t i, auto tag) {
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
            if (projection_) {
                // dh' moves to the step's slot; what stays in grad_state[0] is dL/dh before the step,
                // whose direct part is zero (h enters only through the recurrent product).
                T* dh_step = sh_.grad_projected + slot * B * P;
                for (std::size_t b = b0; b < rows_.end; ++b) {
                    T* dh = sh_.grad_state[0] + b * P;
                    if (!saved.row_active(t, b)) {
                        std::fill_n(dh_step + b * P, P, T(0));
                        continue;
                    }
                    std::copy_n(dh, P, dh_step + b * P);
                    std::fill_n(dh, P, T(0));
                }
                projection_->operator()(dh_step + b0 * P, grad_unprojected_.data());
            }
            for (std::size_t b = b0; b < rows_.end; ++b)
                if (saved.row_active(t, b)) {
                    point(slot, next_slot, after_step, b);
                    saved.rules->backward(row_);
                }
            // dh_{t-1} += dR W_hh; after the first step only the initial state's gradient would remain.
            if (recurrent_ && (k > 0 || sh_.need_h0 || saved.probe))
                recurrent_->operator()(sh_.grad_recurrent + (slot * B + b0) * d_.recurrent_stride(),
                                       sh_.grad_state[0] + b0 * P);
            if (saved.probe)
                for (std::size_t s = 0; s < l.states; ++s) {
                    const std::size_t W = d_.width(s);
                    std::copy_n(sh_.grad_state[s] + b0 * W, rows_.count() * W,
                                saved.probe->grad_states_before[s].data() + (t * B + b0) * W);
                }
        }
    }

    // This group's sums for the per-unit vectors.
    const std::vector<xt::xarray<T>>& grad_units() const { return grad_units_; }

private:
    // Row b of the window's slot; `after` holds the states after the window's last step.
    void point(std::size_t slot, std::size_t next_slot, const T* const* after, std::size_t b) {
        const Saved<T>& saved = *sh_.saved;
        const CellLayout& l = d_.layout;
        const std::size_t B = d_.batch, H = d_.hidden, at = slot * B + b, local = b - rows_.begin;
        row_.gates = saved.gates.data() + at * d_.gate_width();
        for (std::size_t s = 0; s < l.states; ++s) {
            const std::size_t W = d_.width(s);
            state_[s] = saved.states[s].data() + at * W;
            next_[s] = (after ? after[s] : saved.states[s].data() + next_slot * B * W) + b * W;
            dstate_[s] = sh_.grad_state[s] + b * W;
        }
        if (l.projection) {  // as in the forward: no h, m in its place, dL/dm in the row's dh
            state_[0] = nullptr;
            next_[0] = saved.unprojected.data() + at * H;
            dstate_[0] = grad_unprojected_.data() + local * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra_[e] = saved.extra[e].data() + at * H;
        row_.grad_gates = sh_.grad_gates + at * d_.gate_width();
        row_.grad_recurrent = d_.separate() ? sh_.grad_recurrent + at * d_.recurrent_width() : nullptr;
        row_.gated_state = l.second > 0 ? saved.gated.data() + at * H : nullptr;
        row_.grad_second = l.second > 0 ? sh_.grad_second + at * d_.second_width() : nullptr;
        row_.grad_gated_state = l.second > 0 ? grad_gated_.data() + local * H : nullptr;
    }

    const BackwardShared<T>& sh_;
    const Dims& d_;
    Rows rows_;
    std::unique_ptr<blas::PackedGemm<T>> recurrent_, second_, projection_;
    Buffer<T> grad_gated_;        // dq = dR_2 W_2 of this group's rows
    Buffer<T> grad_unprojected_;  // dm = dh' W_proj of this group's rows
    std::vector<xt::xarray<T>> grad_units_;
    std::vector<T*> grad_unit_ptrs_;
    std::vector<const T*> state_, next_, extra_;
    std::vector<T*> dstate_;
    BackwardRow<T> row_;
};

// A weight gradient dW [m, n] = sum over the window's rows of dG^T X (dG [rows, m], X [rows, n]),
// summed over segments. Note: for a tall dW (m >= 2n: the gate rows of W_ih and W_hh against their
// input columns) oneDNN's sgemm computes the transposed product X^T dG markedly faster (measured
// here for LSTM and GRU at T=100, B=32, H=256: 128-158 against 167-184 GFLOP/s), so then dW^T is
// summed and transposed once at the end. Not for large weights (LSTM at H=1024: 5% slower in
// paired runs), where the gain is small and the transpose of megabytes is not.
template <class T>
class WeightGradient {
public:
    static constexpr std::size_t transposed_limit = std::size_t(1) << 19;  // elements
    WeightGradient(xt::xarray<T>& out, std::size_t m, std::size_t n)
        : out_(out), m_(m), n_(n), transposed_(m >= 2 * n && m * n <= transposed_limit) {
        if (transposed_) sum_t_ = Buffer<T>(m * n);
    }
    void add(const T* grad, std::size_t ld_grad, const T* input, std::size_t ld_input, std::size_t rows, T beta) {
        if (transposed_) blas::gemm(true, false, n_, m_, rows, T(1), input, ld_input, grad, ld_grad, beta, sum_t_.data(), m_);
        else blas::gemm(true, false, m_, n_, rows, T(1), grad, ld_grad, input, ld_input, beta, out_.data(), n_);
    }
    void finish() {
        if (!transposed_) return;
        // In tiles, so both sides stay in cache.
        constexpr std::size_t tile = 32;
        const T* from = sum_t_.data();
        T* to = out_.data();
        for (std::size_t i0 = 0; i0 < n_; i0 += tile)
            for (std::size_t j0 = 0; j0 < m_; j0 += tile)
                for (std::size_t i = i0; i < std::min(n_, i0 + tile); ++i)
                    for (std::size_t j = j0; j < std::min(m_, j0 + tile); ++j) to[j * n_ + i] = from[i * m_ + j];
    }

private:
    xt::xarray<T>& out_;
    std::size_t m_, n_;
    bool transposed_;
    Buffer<T> sum_t_;  // dW^T [n, m] when transposed
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
    const std::size_t B = d.batch, H = d.hidden, P = d.output, GH = d.gate_width(), I = d.input, S = l.states;
    const std::size_t WB = saved.segment * B, RH = d.recurrent_width(), R2H = d.second_width();
    const T* x = ctx.input(in.x).value().data();
    const T* w_ih = ctx.input(in.weight_ih).value().data();

    if (saved.probe) {
        saved.probe->grad_states_before.clear();
        for (std::size_t s = 0; s < S; ++s)
            saved.probe->grad_states_before.push_back(xt::xarray<T>::from_shape({d.steps, B, d.width(s)}));
        saved.probe->grad_gates = xt::xarray<T>::from_shape({d.steps, B, GH});
    }
    BackwardShared<T> shared;
    shared.saved = &saved;
    std::vector<xt::xarray<T>> grad_state(S);
    for (std::size_t s = 0; s < S; ++s) {
        const std::size_t W = d.width(s);
        grad_state[s] = xt::xarray<T>::from_shape({B, W});
        if (ctx.has_grad_output(1 + s)) std::copy_n(ctx.grad_output(1 + s).value().data(), B * W, grad_state[s].data());
        else std::fill_n(grad_state[s].data(), B * W, T(0));
        shared.grad_state.push_back(grad_state[s].data());
    }
    shared.grad_output = ctx.has_grad_output(0) ? ctx.grad_output(0).value().data() : nullptr;
    for (std::size_t s = 0; s < S; ++s) shared.need_h0 = shared.need_h0 || ctx.needs_input_grad(in.states + s);

    Buffer<T> grad_gates(WB * GH), grad_recurrent, grad_second, grad_projected;
    if (d.separate()) grad_recurrent = Buffer<T>(WB * RH);
    if (l.second > 0) grad_second = Buffer<T>(WB * R2H);
    if (l.projection) grad_projected = Buffer<T>(WB * P);
    T* dgx = grad_gates.data();
    T* dgh = d.separate() ? grad_recurrent.data() : dgx;
    shared.grad_gates = dgx;
    shared.grad_recurrent = dgh;
    shared.grad_second = grad_second.data();
    shared.grad_projected = grad_projected.data();
    for (std::size_t u = 0; u < l.units; ++u) shared.units.push_back(ctx.input(in.units + u).value().data());
    shared.weight_hh = in.weight_hh >= 0 ? ctx.input(in.weight_hh).value().data() : nullptr;
    shared.weight_second = in.weight_second >= 0 ? ctx.input(in.weight_second).value().data() : nullptr;
    shared.weight_projection = in.weight_projection >= 0 ? ctx.input(in.weight_projection).value().data() : nullptr;
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
                               shared.weight_projection,
                               shared.units};
        rerun = std::make_unique<ForwardPass<T>>(saved, std::move(weights), x, saved.groups);
        for (std::size_t s = 0; s < S; ++s) rerun_after.emplace_back(B * d.width(s));
    }

    // The weight gradients, summed over the segments' GEMMs (one segment without recomputation).
    auto maybe = [&](int index, Shape shape) {
        return index >= 0 && ctx.needs_input_grad(index) ? xt::xarray<T>::from_shape(shape) : xt::xarray<T>();
    };
    auto wanted = [](const xt::xarray<T>& gradient) { return gradient.dimension() > 0; };  // 0-D: not asked for
    const bool want_dx = ctx.needs_input_grad(in.x);
    xt::xarray<T> dx = want_dx ? xt::xarray<T>::from_shape({d.steps, B, I}) : xt::xarray<T>();
    xt::xarray<T> dw_ih = maybe(in.weight_ih, {GH, I}), db_ih = maybe(in.bias_ih, {GH});
    xt::xarray<T> dw_hh = maybe(in.weight_hh, {RH, P}), db_hh = maybe(in.bias_hh, {RH});
    xt::xarray<T> dw_2 = maybe(in.weight_second, {R2H, H}), dw_proj = maybe(in.weight_projection, {P, H});
    auto weight_gradient = [&](xt::xarray<T>& out, std::size_t m, std::size_t n) {
        return wanted(out) ? std::make_unique<WeightGradient<T>>(out, m, n) : nullptr;
    };
    auto weight_ih = weight_gradient(dw_ih, GH, I), weight_hh = weight_gradient(dw_hh, RH, P);
    auto weight_second = weight_gradient(dw_2, R2H, H), weight_projection = weight_gradient(dw_proj, P, H);
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
        if (wanted(dw_ih)) weight_ih->add(dgx, GH, x_rows, I, rows, beta);
        if (wanted(db_ih)) column_sums(dgx, rows, GH, GH, beta != T(0), db_ih.data(), sums.data());
        if (wanted(dw_hh)) weight_hh->add(dgh, d.recurrent_stride(), saved.states[0].data(), P, rows, beta);
        if (wanted(db_hh) && !db_hh_is_db_ih)
            column_sums(dgh, rows, RH, d.recurrent_stride(), beta != T(0), db_hh.data(), sums.data());
        if (wanted(dw_2)) weight_second->add(grad_second.data(), R2H, saved.gated.data(), H, rows, beta);
        if (wanted(dw_proj)) weight_projection->add(grad_projected.data(), P, saved.unprojected.data(), H, rows, beta);
    }
    for (auto* weight : {weight_ih.get(), weight_hh.get(), weight_second.get(), weight_projection.get()})
        if (weight) weight->finish();
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
    give(in.weight_projection, dw_proj);
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
    if (d.layout.projection) index.weight_projection = add_input(w.weight_projection);
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

DriverMemory driver_memory() { return {driver::live_bytes.load(), driver::peak_bytes.load()}; }

void reset_driver_memory_peak() { driver::peak_bytes.store(driver::live_bytes.load()); }

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
