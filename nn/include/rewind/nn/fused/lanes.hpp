#pragma once
// Helpers for writing fused rules (cell_rules.hpp) with xsimd: one expression serves the SIMD
// body and the scalar tail. Inside `lanes<T>(n, [&](std::size_t j, auto tag) { using V =
// decltype(tag); ... })` V is xsimd::batch<T> for j = 0, W, 2W, ... and plain T for the tail.
//
// sigmoid, tanh, exp and relu use the formulas of the generic ops, so both paths round alike
// (exp and tanh with their arguments clamped where they saturate: note "saturated arguments").

#include <cmath>
#include <cstddef>
#include <type_traits>

// gcc 12 may report -Wmaybe-uninitialized inside its own AVX-512 intrinsics when xsimd's exp
// is inlined: a known false positive (GCC bug 105593, fixed in GCC 13); compile files with rules
// with -Wno-maybe-uninitialized on gcc 12 if it bothers you.
#include <xsimd/xsimd.hpp>

namespace rw::nn::fused {

// Distinct names from xsimd's: an unqualified store(p, batch) would find xsimd::store by ADL,
// which is the aligned store.
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

namespace detail {

// Note [Saturated arguments]: xsimd's exp and tanh turn x into an integer exponent before they
// check the range, and far outside it (a fuzzed state dict gave a sigmoid -4.5e102) that
// conversion overflows: undefined behaviour, which UBSan reports. Past `bound` the function is
// already saturated (exp 0 or inf, tanh -1 or 1, in float and double), so the argument is clamped
// to it there, NaN is kept out of the conversion and put back: every result is what the
// unclamped call returns where it is defined, so the paths still round alike.
template <class V, class F>
inline V saturated(const V& x, typename V::value_type bound, F&& f) {
    using T = typename V::value_type;
    const auto nan = xsimd::isnan(x);
    const V clamped = xsimd::select(x > V(bound), V(bound), xsimd::select(x < V(-bound), V(-bound), x));
    return xsimd::select(nan, x, f(xsimd::select(nan, V(T(0)), clamped)));
}

}  // namespace detail

template <class V>
inline V exp_lane(const V& x) {
    if constexpr (std::is_arithmetic_v<V>) return std::exp(x);
    else return detail::saturated(x, typename V::value_type(800), [](const V& v) { return xsimd::exp(v); });
}

template <class V>
inline V sigmoid_lane(const V& x) {
    return V(1) / (V(1) + exp_lane(-x));
}

template <class V>
inline V tanh_lane(const V& x) {
    if constexpr (std::is_arithmetic_v<V>) return xsimd::tanh(x);
    else return detail::saturated(x, typename V::value_type(40), [](const V& v) { return xsimd::tanh(v); });
}

template <class V>
inline V relu_lane(const V& x) {
    if constexpr (std::is_arithmetic_v<V>) return x > V(0) ? x : V(0);
    else return xsimd::max(x, V(0));
}

// g where y > 0, else 0: relu's derivative read off its output.
template <class V>
inline V where_positive(const V& y, const V& g) {
    if constexpr (std::is_arithmetic_v<V>) return y > V(0) ? g : V(0);
    else return xsimd::select(y > V(0), g, V(0));
}

template <class T, class Body>
inline void lanes(std::size_t n, Body&& body) {
    using Batch = xsimd::batch<T>;
    constexpr std::size_t width = Batch::size;
    std::size_t j = 0;
    for (; j + width <= n; j += width) body(j, Batch{});
    for (; j < n; ++j) body(j, T{});
}

}  // namespace rw::nn::fused
