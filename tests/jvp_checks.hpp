#pragma once
// The checks of forward mode that cannot be fooled (test_ops_jvp.cpp): the adjoint identity
// <J v, u> = <v, Jᵀ u> between rw::jvp and rw::vjp (exact, no finite-difference noise), central
// differences of the function as a second opinion, and forward-over-reverse HVPs against
// reverse-over-reverse. Each returns the measured gap so that a test can also assert that a
// planted wrong rule is caught.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <rewind/autograd.hpp>

#include "op_checks.hpp"

namespace rw::jvp_checks {

using D = Tensor<double>;
using Array = xt::xarray<double>;

// One op (named as in ops.hpp or as its node) in one form: the function and where it is taken.
struct OpCase {
    std::string op;
    std::string label;
    TensorFunction<double> f;
    std::vector<D> primals;
    bool smooth = true;  // false at a kink on purpose (ties): no central differences there
};

inline D random_like(const D& like, std::uint64_t seed) {
    return D(op_checks::random_array(like.shape(), seed, -1.0, 1.0));
}

// Σ_i <a_i, b_i>, and in `scale` Σ_i Σ |a_i b_i|, the size the rounding of the sum is relative to.
inline double dot(const std::vector<D>& a, const std::vector<D>& b, double& scale) {
    double total = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!a[i].defined() || !b[i].defined()) continue;
        const Array &x = a[i].value(), &y = b[i].value();
        for (std::size_t k = 0; k < x.size(); ++k) {
            total += x.flat(k) * y.flat(k);
            scale += std::abs(x.flat(k) * y.flat(k));
        }
    }
    return total;
}

struct AdjointGap {
    double relative = 0;  // |<J v, u> - <v, Jᵀ u>| / (Σ|J v ⊙ u| + Σ|v ⊙ Jᵀ u|)
    double scale = 0;     // 0 when both sides vanish term by term
};

// The identity with tangents on the inputs listed in `with_tangent` only (the others undefined:
// a zero direction, the path that skips them).
inline AdjointGap adjoint_gap(const OpCase& c, const std::vector<std::size_t>& with_tangent, std::uint64_t seed = 11) {
    std::vector<D> v(c.primals.size());
    for (std::size_t i : with_tangent) v[i] = random_like(c.primals[i], seed + 7 * i);
    const JvpResult<double> forward = jvp<double>(c.f, c.primals, v);
    std::vector<D> u;
    for (std::size_t o = 0; o < forward.outputs.size(); ++o) u.push_back(random_like(forward.outputs[o], seed + 100 + o));
    const VjpResult<double> reverse = vjp<double>(c.f, c.primals, u);
    AdjointGap gap;
    const double left = dot(forward.tangents, u, gap.scale);
    std::vector<D> directions, gradients;
    for (std::size_t i : with_tangent) {
        directions.push_back(v[i]);
        gradients.push_back(reverse.gradients[i]);
    }
    const double right = dot(directions, gradients, gap.scale);
    gap.relative = gap.scale > 0 ? std::abs(left - right) / gap.scale : std::abs(left - right);
    return gap;
}

// The largest |jvp - central difference| over the outputs' elements, relative to 1 + |difference|.
inline double central_difference_gap(const OpCase& c, double step = 1e-6, std::uint64_t seed = 11) {
    std::vector<D> v, plus, minus;
    for (std::size_t i = 0; i < c.primals.size(); ++i) {
        v.push_back(random_like(c.primals[i], seed + 7 * i));
        plus.push_back(D(Array(c.primals[i].value() + step * v[i].value())));
        minus.push_back(D(Array(c.primals[i].value() - step * v[i].value())));
    }
    const JvpResult<double> forward = jvp<double>(c.f, c.primals, v);
    std::vector<D> up, down;
    {
        NoGradGuard plain;
        up = c.f(plus);
        down = c.f(minus);
    }
    double worst = 0;
    for (std::size_t o = 0; o < up.size(); ++o) {
        const Array difference = (up[o].value() - down[o].value()) / (2 * step);
        const Array& tangent = forward.tangents[o].value();
        for (std::size_t k = 0; k < difference.size(); ++k)
            worst = std::max(worst, std::abs(tangent.flat(k) - difference.flat(k)) / (1 + std::abs(difference.flat(k))));
    }
    return worst;
}

// max_i ‖hvp_i - (reverse-over-reverse)_i‖_∞ / max_i ‖(reverse-over-reverse)_i‖_∞: rw::hvp
// (forward-over-reverse) against grad(<grad(f, create_graph), v>).
inline double hvp_gap(const LossFunction<double>& f, const std::vector<D>& primals, const std::vector<D>& vectors) {
    const HvpResult<double> fast = hvp<double>(f, primals, vectors);
    std::vector<D> leaves;
    for (const auto& p : primals) leaves.push_back(p.detach().set_requires_grad(true));
    EnableGradGuard recording(true);
    const std::vector<D> gradient = grad<double>({f(leaves)}, leaves, {}, {.create_graph = true});
    D inner = D::scalar(0.0);
    for (std::size_t i = 0; i < leaves.size(); ++i)
        if (gradient[i].defined()) inner = add(inner, sum(mul(gradient[i], vectors[i])));
    const std::vector<D> reference = grad<double>({inner}, leaves);
    double difference = 0, size = 0;
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        const Array expected = reference[i].defined() ? reference[i].value() : Array(xt::zeros<double>(primals[i].shape()));
        const Array& actual = fast.product[i].value();
        for (std::size_t k = 0; k < expected.size(); ++k) {
            difference = std::max(difference, std::abs(actual.flat(k) - expected.flat(k)));
            size = std::max(size, std::abs(expected.flat(k)));
        }
    }
    return size > 0 ? difference / size : difference;
}

}  // namespace rw::jvp_checks
