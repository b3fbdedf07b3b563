#pragma once
// Private to the fused driver (sequence.cpp): the backward step loop of one window for one row
// group. The weight gradients summed over the windows' GEMMs are in weight_gradients.hpp.

#include <memory>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>

#include <rewind/autograd/gemm.hpp>

#include "window.hpp"

namespace rw::nn::fused::driver {

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

}  // namespace rw::nn::fused::driver
