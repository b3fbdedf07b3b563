#pragma once
// Private to the fused driver (sequence.cpp): the forward step loop of one window for one row
// group, and one window of the whole batch (the input projections as one GEMM, then every group's
// step loop). Backward reruns segments with the same classes (Note [Recomputation], window.hpp).

#include <memory>
#include <vector>

#include <rewind/autograd/gemm.hpp>

#include "window.hpp"

namespace rw::nn::fused::driver {

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
            const T* h_before = saved_.states[0].data() + saved_.state_slot(slot) * B * P;
            T* h_after = last ? after[0] : saved_.states[0].data() + saved_.state_slot(next_slot) * B * P;
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
                second_->operator()(saved_.gated.data() + (saved_.step_slot(slot) * B + b0) * H, second_out_.data());
                for (std::size_t b = b0; b < rows_.end; ++b)
                    if (saved_.row_active(t, b)) {
                        point(slot, next_slot, last ? &after : nullptr, b);
                        saved_.rules->forward_second(row_);
                    }
            }
            if (projection_) {
                projection_->operator()(saved_.unprojected.data() + (saved_.step_slot(slot) * B + b0) * H,
                                        h_after + b0 * P);
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
        const std::size_t state_at = saved_.state_slot(slot) * B + b, step = saved_.step_slot(slot) * B + b;
        row_.gates = saved_.gates.data() + at * d_.gate_width();
        for (std::size_t s = 0; s < l.states; ++s) {
            const std::size_t W = d_.width(s);
            state_[s] = saved_.states[s].data() + state_at * W;
            next_[s] = (after ? (*after)[s] : saved_.states[s].data() + saved_.state_slot(next_slot) * B * W) + b * W;
        }
        if (l.projection) {  // the rule sees no h and writes m; the group projects it (cell_rules.hpp)
            state_[0] = nullptr;
            next_[0] = saved_.unprojected.data() + step * H;
        }
        for (std::size_t e = 0; e < l.saved; ++e) extra_[e] = saved_.extra[e].data() + step * H;
        row_.recurrent = d_.separate() ? recurrent_out_.data() + local * d_.recurrent_width() : nullptr;
        row_.bias_hh = d_.separate() ? w_.bias_hh : nullptr;
        row_.gated_state = l.second > 0 ? saved_.gated.data() + step * H : nullptr;
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
            std::copy_n(before[s], B * d.width(s),
                        saved_.states[s].data() + saved_.state_slot(first_slot) * B * d.width(s));
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

}  // namespace rw::nn::fused::driver
