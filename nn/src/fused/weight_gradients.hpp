#pragma once
// Private to the fused driver (sequence.cpp): the weight and bias gradients of one backward,
// summed over the segments' GEMMs (one segment without recomputation).

#include <algorithm>
#include <memory>

#include <xtensor/xarray.hpp>

#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gemm.hpp>

#include "backward_steps.hpp"

namespace rw::nn::fused::driver {

// A weight gradient dW [m, n] = sum over the window's rows of dG^T X (dG [rows, m], X [rows, n]),
// summed over segments; see Note [Transposed weight gradients].
//
// Note [Transposed weight gradients]: for a tall dW (m >= 2n: the gate rows of W_ih and W_hh
// against their input columns) oneDNN's sgemm computes the transposed product X^T dG markedly
// faster, so then dW^T is summed and transposed once at the end. Not for large weights, where the
// gain is small and the transpose of megabytes is not. The measurements are in docs/bench.md.
template <class T>
class WeightGradient {
public:
    static constexpr std::size_t transposed_limit = std::size_t(1) << 19;  // elements
    // Whether dW [m, n] is summed transposed (Note [Transposed weight gradients]).
    static bool transposes(std::size_t m, std::size_t n) { return m >= 2 * n && m * n <= transposed_limit; }
    WeightGradient(xt::xarray<T>& out, std::size_t m, std::size_t n)
        : out_(out), m_(m), n_(n), transposed_(transposes(m, n)) {
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

// Which weight gradients the op is asked for, and their sums over the segments: one
// WeightGradient each, or one joint product for W_ih and W_hh (Note [Joint weight product]), and
// b_hh's gradient taken from b_ih's where both add into the same pre-activations.
template <class T>
class WeightGradients {
public:
    // `window_rows`: rows of the largest segment (the window's steps times the batch).
    WeightGradients(const Dims& d, const InputIndex& in, std::size_t window_rows, const BackwardContext<T>& ctx)
        : d_(d), in_(in) {
        const std::size_t GH = d.gate_width(), I = d.input, P = d.output, H = d.hidden, RH = d.recurrent_width(),
                          R2H = d.second_width();
        auto maybe = [&](int index, Shape shape) {
            return index >= 0 && ctx.needs_input_grad(index) ? xt::xarray<T>::from_shape(shape) : xt::xarray<T>();
        };
        dw_ih_ = maybe(in.weight_ih, {GH, I}), db_ih_ = maybe(in.bias_ih, {GH});
        dw_hh_ = maybe(in.weight_hh, {RH, P}), db_hh_ = maybe(in.bias_hh, {RH});
        dw_2_ = maybe(in.weight_second, {R2H, H}), dw_proj_ = maybe(in.weight_projection, {P, H});
        const std::size_t IP = I + P;
        joint_ = wanted(dw_ih_) && wanted(dw_hh_) && !d.separate() && RH == GH && WeightGradient<T>::transposes(GH, IP) &&
                 window_rows >= 4 * IP;
        if (joint_) {
            dw_joint_ = xt::xarray<T>::from_shape({GH, IP});
            joint_rows_ = Buffer<T>(window_rows * IP);
            joint_sum_ = sum(dw_joint_, GH, IP);
        } else {
            ih_ = sum(dw_ih_, GH, I);
            hh_ = sum(dw_hh_, RH, P);
        }
        second_ = sum(dw_2_, R2H, H);
        projection_ = sum(dw_proj_, P, H);
        db_hh_is_db_ih_ = !d.separate() && RH == GH && wanted(db_ih_);
        column_scratch_ = Buffer<T>(std::max(GH, RH));
    }

    // One segment's share over its `rows` rows (x_rows: their inputs); the first segment summed
    // sets the sums, the others add to them.
    void add(const BackwardShared<T>& sh, const T* x_rows, std::size_t rows, bool first) {
        const Saved<T>& saved = *sh.saved;
        const std::size_t GH = d_.gate_width(), I = d_.input, P = d_.output, H = d_.hidden, RH = d_.recurrent_width(),
                          R2H = d_.second_width();
        const T beta = first ? T(0) : T(1);
        const T* h_rows = saved.states[0].data();
        if (joint_) {
            const std::size_t IP = I + P;
            T* joined = joint_rows_.data();
            for (std::size_t r = 0; r < rows; ++r) {
                std::copy_n(x_rows + r * I, I, joined + r * IP);
                std::copy_n(h_rows + r * P, P, joined + r * IP + I);
            }
            joint_sum_->add(sh.grad_gates, GH, joined, IP, rows, beta);
        }
        if (ih_) ih_->add(sh.grad_gates, GH, x_rows, I, rows, beta);
        if (wanted(db_ih_)) column_sums(sh.grad_gates, rows, GH, GH, !first, db_ih_.data(), column_scratch_.data());
        if (hh_) hh_->add(sh.grad_recurrent, d_.recurrent_stride(), h_rows, P, rows, beta);
        if (wanted(db_hh_) && !db_hh_is_db_ih_)
            column_sums(sh.grad_recurrent, rows, RH, d_.recurrent_stride(), !first, db_hh_.data(), column_scratch_.data());
        if (second_) second_->add(sh.grad_second, R2H, saved.gated.data(), H, rows, beta);
        if (projection_) projection_->add(sh.grad_projected, P, saved.unprojected.data(), H, rows, beta);
    }

    // After the last segment: the transposed sums turned, the joint product split, b_hh's copy.
    void finish() {
        for (auto* weight : {joint_sum_.get(), ih_.get(), hh_.get(), second_.get(), projection_.get()})
            if (weight) weight->finish();
        if (joint_) {
            const std::size_t GH = d_.gate_width(), I = d_.input, P = d_.output, IP = I + P;
            for (std::size_t g = 0; g < GH; ++g) {
                const T* row = dw_joint_.data() + g * IP;
                std::copy_n(row, I, dw_ih_.data() + g * I);
                std::copy_n(row + I, P, dw_hh_.data() + g * P);
            }
        }
        if (db_hh_is_db_ih_ && wanted(db_hh_)) db_hh_ = db_ih_;
    }

    // Moves the finished gradients to their op inputs' positions.
    void give(Gradients<T>& gradients) {
        auto give_one = [&](int index, xt::xarray<T>& value) {
            if (index >= 0 && wanted(value)) gradients[index] = Tensor<T>(std::move(value));
        };
        give_one(in_.weight_ih, dw_ih_);
        give_one(in_.bias_ih, db_ih_);
        give_one(in_.weight_hh, dw_hh_);
        give_one(in_.bias_hh, db_hh_);
        give_one(in_.weight_second, dw_2_);
        give_one(in_.weight_projection, dw_proj_);
    }

private:
    static bool wanted(const xt::xarray<T>& gradient) { return gradient.dimension() > 0; }  // 0-D: not asked for
    static std::unique_ptr<WeightGradient<T>> sum(xt::xarray<T>& out, std::size_t m, std::size_t n) {
        return wanted(out) ? std::make_unique<WeightGradient<T>>(out, m, n) : nullptr;
    }

    const Dims& d_;
    const InputIndex& in_;
    xt::xarray<T> dw_ih_, db_ih_, dw_hh_, db_hh_, dw_2_, dw_proj_, dw_joint_;
    bool joint_ = false, db_hh_is_db_ih_ = false;
    Buffer<T> joint_rows_;      // the rows of [x | h] of a segment, when joint
    Buffer<T> column_scratch_;  // column_sums' scratch
    std::unique_ptr<WeightGradient<T>> joint_sum_, ih_, hh_, second_, projection_;
};

// Note [Joint weight product]: where the recurrent product adds into the gates, W_ih and W_hh
// see the same dL/dG, so [dW_ih | dW_hh] = dG^T [x | h] can be one GEMM over rows of width
// I + P, the rows of [x | h] copied per window. That pays where the joint weight is summed
// transposed (tall and small) over many rows (at least 4 (I + P)) and loses otherwise, so only
// there; the measurements are in docs/bench.md.

}  // namespace rw::nn::fused::driver
