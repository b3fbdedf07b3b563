// The element-wise passes of the fused recurrent kernels: one xsimd loop per step over the gate
// buffer, the scalar tail running the same code on plain T.

#include <algorithm>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "rewind/nn/fused/kernels.hpp"

namespace rw::nn::fused::detail {

namespace {

// V is xsimd::batch<T> or T itself (the tail); the same expressions serve both. The names are
// distinct from xsimd's: an unqualified store(p, batch) would find xsimd::store by ADL, which is
// the aligned store.
template <class V, class T>
inline V load_lane(const T* p) {
    if constexpr (std::is_arithmetic_v<V>) return *p;
    else return V::load_unaligned(p);
}

template <class V, class T>
inline void store_lane(T* p, const V& v) {
    if constexpr (std::is_arithmetic_v<V>) *p = v;
    else v.store_unaligned(p);
}

// The formulas of the generic ops (ops_elementwise.cpp), so both paths round alike.
template <class V>
inline V sigmoid(const V& x) {
    return V(1) / (V(1) + xsimd::exp(-x));
}

template <class V>
inline V tanh_lane(const V& x) {
    return xsimd::tanh(x);
}

template <class V>
inline V relu(const V& x) {
    if constexpr (std::is_arithmetic_v<V>) return x > V(0) ? x : V(0);
    else return xsimd::max(x, V(0));
}

// g where y > 0, else 0: relu's derivative, read off its output.
template <class V>
inline V where_positive(const V& y, const V& g) {
    if constexpr (std::is_arithmetic_v<V>) return y > V(0) ? g : V(0);
    else return xsimd::select(y > V(0), g, V(0));
}

// Calls body(j, V{}) for j = 0, W, 2W, ... with V = batch<T>, then body(j, T{}) for the tail.
template <class T, class Body>
inline void lanes(std::size_t n, Body&& body) {
    using Batch = xsimd::batch<T>;
    constexpr std::size_t width = Batch::size;
    std::size_t j = 0;
    for (; j + width <= n; j += width) body(j, Batch{});
    for (; j < n; ++j) body(j, T{});
}

template <class T>
inline bool row_active(const std::uint8_t* active, std::size_t b) {
    return !active || active[b];
}

// A finished row: the state carries over, the output is zero.
template <class T>
inline void keep_row(const ForwardStep<T>& s, std::size_t b, bool with_c) {
    const std::size_t H = s.hidden;
    std::copy_n(s.h_prev + b * H, H, s.h_next + b * H);
    if (with_c) std::copy_n(s.c_prev + b * H, H, s.c_next + b * H);
    std::fill_n(s.output + b * H, H, T(0));
}

}  // namespace

template <class T>
void rnn_forward_step(const ForwardStep<T>& s, bool use_relu) {
    const std::size_t H = s.hidden;
    for (std::size_t b = 0; b < s.batch; ++b) {
        if (!row_active<T>(s.active, b)) {
            keep_row(s, b, false);
            continue;
        }
        T* pre = s.gates + b * H;
        T* h = s.h_next + b * H;
        T* out = s.output + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V x = load_lane<V>(pre + j);
            const V y = use_relu ? relu(x) : tanh_lane(x);
            store_lane(pre + j, y);
            store_lane(h + j, y);
            store_lane(out + j, y);
        });
    }
}

template <class T>
void rnn_backward_step(const BackwardStep<T>& s, bool use_relu) {
    const std::size_t H = s.hidden;
    for (std::size_t b = 0; b < s.batch; ++b) {
        T* dpre = s.grad_gates + b * H;
        if (!row_active<T>(s.active, b)) {
            std::fill_n(dpre, H, T(0));  // dh passes through unchanged
            continue;
        }
        const T* y = s.gates + b * H;
        const T* dout = s.grad_output ? s.grad_output + b * H : nullptr;
        T* dh = s.grad_h + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            V g = load_lane<V>(dh + j);
            if (dout) g = g + load_lane<V>(dout + j);
            const V yv = load_lane<V>(y + j);
            const V d = use_relu ? where_positive(yv, g) : g * (V(1) - yv * yv);
            store_lane(dpre + j, d);
            store_lane(dh + j, V(0));
        });
    }
}

template <class T>
void lstm_forward_step(const ForwardStep<T>& s) {
    const std::size_t H = s.hidden;
    for (std::size_t b = 0; b < s.batch; ++b) {
        if (!row_active<T>(s.active, b)) {
            keep_row(s, b, true);
            continue;
        }
        T* gi = s.gates + b * 4 * H;
        T* gf = gi + H;
        T* gg = gi + 2 * H;
        T* go = gi + 3 * H;
        const T* cp = s.c_prev + b * H;
        T* c = s.c_next + b * H;
        T* h = s.h_next + b * H;
        T* out = s.output + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V i = sigmoid(load_lane<V>(gi + j));
            const V f = sigmoid(load_lane<V>(gf + j));
            const V g = tanh_lane(load_lane<V>(gg + j));
            const V o = sigmoid(load_lane<V>(go + j));
            const V cn = f * load_lane<V>(cp + j) + i * g;
            const V hn = o * tanh_lane(cn);
            store_lane(gi + j, i);
            store_lane(gf + j, f);
            store_lane(gg + j, g);
            store_lane(go + j, o);
            store_lane(c + j, cn);
            store_lane(h + j, hn);
            store_lane(out + j, hn);
        });
    }
}

template <class T>
void lstm_backward_step(const BackwardStep<T>& s) {
    const std::size_t H = s.hidden;
    for (std::size_t b = 0; b < s.batch; ++b) {
        T* dgi = s.grad_gates + b * 4 * H;
        if (!row_active<T>(s.active, b)) {
            std::fill_n(dgi, 4 * H, T(0));  // dh and dc pass through unchanged
            continue;
        }
        T* dgf = dgi + H;
        T* dgg = dgi + 2 * H;
        T* dgo = dgi + 3 * H;
        const T* gi = s.gates + b * 4 * H;
        const T* gf = gi + H;
        const T* gg = gi + 2 * H;
        const T* go = gi + 3 * H;
        const T* cp = s.c_prev + b * H;
        const T* cn = s.c_next + b * H;
        const T* dout = s.grad_output ? s.grad_output + b * H : nullptr;
        T* dh = s.grad_h + b * H;
        T* dc = s.grad_c + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            V dhv = load_lane<V>(dh + j);
            if (dout) dhv = dhv + load_lane<V>(dout + j);
            const V i = load_lane<V>(gi + j), f = load_lane<V>(gf + j), g = load_lane<V>(gg + j), o = load_lane<V>(go + j);
            const V tc = tanh_lane(load_lane<V>(cn + j));
            const V dcv = load_lane<V>(dc + j) + dhv * o * (V(1) - tc * tc);
            store_lane(dgi + j, dcv * g * i * (V(1) - i));
            store_lane(dgf + j, dcv * load_lane<V>(cp + j) * f * (V(1) - f));
            store_lane(dgg + j, dcv * i * (V(1) - g * g));
            store_lane(dgo + j, dhv * tc * o * (V(1) - o));
            store_lane(dc + j, dcv * f);
            store_lane(dh + j, V(0));
        });
    }
}

template <class T>
void gru_forward_step(const ForwardStep<T>& s) {
    const std::size_t H = s.hidden;
    const T* br = s.bias_hh;
    const T* bz = br + H;
    const T* bn = br + 2 * H;
    for (std::size_t b = 0; b < s.batch; ++b) {
        if (!row_active<T>(s.active, b)) {
            keep_row(s, b, false);
            continue;
        }
        T* xr = s.gates + b * 3 * H;
        T* xz = xr + H;
        T* xn = xr + 2 * H;
        const T* hr = s.hidden_gates + b * 3 * H;
        const T* hz = hr + H;
        const T* hn = hr + 2 * H;
        T* saved_n = s.hidden_n + b * H;
        const T* hp = s.h_prev + b * H;
        T* h = s.h_next + b * H;
        T* out = s.output + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V r = sigmoid(load_lane<V>(xr + j) + (load_lane<V>(hr + j) + load_lane<V>(br + j)));
            const V z = sigmoid(load_lane<V>(xz + j) + (load_lane<V>(hz + j) + load_lane<V>(bz + j)));
            const V hidden_n = load_lane<V>(hn + j) + load_lane<V>(bn + j);
            const V n = tanh_lane(load_lane<V>(xn + j) + r * hidden_n);
            const V hv = n + z * (load_lane<V>(hp + j) - n);
            store_lane(xr + j, r);
            store_lane(xz + j, z);
            store_lane(xn + j, n);
            store_lane(saved_n + j, hidden_n);
            store_lane(h + j, hv);
            store_lane(out + j, hv);
        });
    }
}

template <class T>
void gru_backward_step(const BackwardStep<T>& s) {
    const std::size_t H = s.hidden;
    for (std::size_t b = 0; b < s.batch; ++b) {
        T* dxr = s.grad_gates + b * 3 * H;
        T* dhr = s.grad_hidden_gates + b * 3 * H;
        if (!row_active<T>(s.active, b)) {
            std::fill_n(dxr, 3 * H, T(0));
            std::fill_n(dhr, 3 * H, T(0));
            continue;
        }
        T* dxz = dxr + H;
        T* dxn = dxr + 2 * H;
        T* dhz = dhr + H;
        T* dhn = dhr + 2 * H;
        const T* gr = s.gates + b * 3 * H;
        const T* gz = gr + H;
        const T* gn = gr + 2 * H;
        const T* saved_n = s.hidden_n + b * H;
        const T* hp = s.h_prev + b * H;
        const T* dout = s.grad_output ? s.grad_output + b * H : nullptr;
        T* dh = s.grad_h + b * H;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            V dhv = load_lane<V>(dh + j);
            if (dout) dhv = dhv + load_lane<V>(dout + j);
            const V r = load_lane<V>(gr + j), z = load_lane<V>(gz + j), n = load_lane<V>(gn + j);
            const V dpn = dhv * (V(1) - z) * (V(1) - n * n);  // d(pre-activation of n)
            const V dpr = dpn * load_lane<V>(saved_n + j) * r * (V(1) - r);
            const V dpz = dhv * (load_lane<V>(hp + j) - n) * z * (V(1) - z);
            store_lane(dxr + j, dpr);
            store_lane(dxz + j, dpz);
            store_lane(dxn + j, dpn);
            store_lane(dhr + j, dpr);
            store_lane(dhz + j, dpz);
            store_lane(dhn + j, dpn * r);
            store_lane(dh + j, dhv * z);
        });
    }
}

template <class T>
void column_sums(const T* matrix, std::size_t rows, std::size_t cols, T* sums, bool accumulate) {
    if (!accumulate) std::fill_n(sums, cols, T(0));
    for (std::size_t r = 0; r < rows; ++r) {
        const T* row = matrix + r * cols;
        lanes<T>(cols, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            store_lane(sums + j, load_lane<V>(sums + j) + load_lane<V>(row + j));
        });
    }
}

template <class T>
void fill_rows(T* out, std::size_t rows, std::size_t cols, const T* a, const T* b) {
    if (rows == 0) return;
    lanes<T>(cols, [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        V v = load_lane<V>(a + j);
        if (b) v = v + load_lane<V>(b + j);
        store_lane(out + j, v);
    });
    for (std::size_t r = 1; r < rows; ++r) std::memcpy(out + r * cols, out, cols * sizeof(T));
}

#define REWIND_FUSED_INSTANTIATE(T)                                                \
    template void rnn_forward_step<T>(const ForwardStep<T>&, bool);                \
    template void lstm_forward_step<T>(const ForwardStep<T>&);                     \
    template void gru_forward_step<T>(const ForwardStep<T>&);                      \
    template void rnn_backward_step<T>(const BackwardStep<T>&, bool);              \
    template void lstm_backward_step<T>(const BackwardStep<T>&);                   \
    template void gru_backward_step<T>(const BackwardStep<T>&);                    \
    template void column_sums<T>(const T*, std::size_t, std::size_t, T*, bool);    \
    template void fill_rows<T>(T*, std::size_t, std::size_t, const T*, const T*);

REWIND_FUSED_INSTANTIATE(float)
REWIND_FUSED_INSTANTIATE(double)

#undef REWIND_FUSED_INSTANTIATE

}  // namespace rw::nn::fused::detail
