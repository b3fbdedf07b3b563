// check_fused_cell's part for a cell's optional tangent rules (check.hpp): the fast tangent
// sweeps (tangent.cpp) over one layer-direction against the derivatives of the cell's step() on
// the tape, whole-sequence, in float64: the forward sweep's J v, and the backward sweep's
// ∇²<dy, F> v + Jᵀ u, both from a graph differentiated twice (no forward-mode rule needed).

#include "check_tangent.hpp"

#include <algorithm>
#include <cmath>

#include <rewind/autograd/engine.hpp>
#include <rewind/autograd/ops.hpp>

#include "tangent_run.hpp"

namespace rw::nn::fused::detail {

namespace {

TensorDifference compare(const std::string& name, const Tensor<double>& fused, const Tensor<double>& tape,
                         const Shape& shape) {
    const xt::xarray<double> zeros = xt::zeros<double>(shape);
    const xt::xarray<double>& a = fused.defined() ? fused.value() : zeros;
    const xt::xarray<double>& b = tape.defined() ? tape.value() : zeros;
    TensorDifference d{name, 0, 0};
    if (a.shape() != b.shape()) return {name, INFINITY, 0};
    for (std::size_t i = 0; i < a.size(); ++i) {
        d.difference = std::max(d.difference, std::isnan(a.data()[i]) != std::isnan(b.data()[i])
                                                  ? INFINITY
                                                  : std::abs(a.data()[i] - b.data()[i]));
        d.scale = std::max(d.scale, std::abs(b.data()[i]));
    }
    return d;
}

Tensor<double> random_like(const Shape& shape, Generator& g) {
    xt::xarray<double> value = xt::xarray<double>::from_shape(shape);
    for (auto& v : value) v = g.uniform(-1.0, 1.0);
    return Tensor<double>(std::move(value));
}

}  // namespace

// The cell's step() over the sequence on the tape; finished rows keep their state and output zeros.
std::vector<Tensor<double>> tape_sequence(const RecurrentCell<double>& cell, const Tensor<double>& x,
                                             const std::vector<Tensor<double>>& initial,
                                             const std::vector<std::int64_t>& lengths, bool reverse) {
    const std::size_t T = x.size(0), B = x.size(1);
    const Tensor<double> prepared = cell.prepare_input(x);
    State<double> state = initial;
    std::vector<Tensor<double>> outputs(T);
    for (std::size_t k = 0; k < T; ++k) {
        const std::size_t t = reverse ? T - 1 - k : k;
        State<double> next = cell.step(squeeze(slice(prepared, 0, t, t + 1), 0), state);
        Tensor<double> out = next[0];
        if (!lengths.empty())
            for (std::size_t s = 0; s < next.size(); ++s) {
                xt::xarray<bool> on = xt::xarray<bool>::from_shape(next[s].shape());
                for (std::size_t b = 0; b < B; ++b)
                    for (std::size_t j = 0; j < next[s].size(1); ++j) on(b, j) = std::int64_t(t) < lengths[b];
                if (s == 0) out = rw::where(on, next[0], Tensor<double>::zeros(next[0].shape()));
                next[s] = rw::where(on, next[s], state[s]);
            }
        outputs[t] = out;
        state = next;
    }
    std::vector<Tensor<double>> result{stack(outputs, 0)};
    for (const auto& s : state) result.push_back(s);
    return result;
}

std::string check_tangent_rules(const RecurrentCell<double>& cell, const CellRules<double>& rules,
                                const xt::xarray<double>& x_value, const std::vector<xt::xarray<double>>& initial_values,
                                const std::vector<std::int64_t>& lengths, bool reverse,
                                const std::vector<xt::xarray<double>>& dy_values, Generator& g,
                                std::vector<TensorDifference>& differences) {
    const Tensor<double> x(x_value, true);
    std::vector<Tensor<double>> initial, dy;
    for (const auto& s : initial_values) initial.emplace_back(s, true);
    for (const auto& d : dy_values) dy.emplace_back(d, true);
    const std::vector<Tensor<double>> inputs = tangent_op_inputs(rules, x, initial);
    std::vector<Tensor<double>> v, u;
    for (const auto& t : inputs) v.push_back(random_like(t.shape(), g));
    for (const auto& d : dy) u.push_back(random_like(d.shape(), g));

    const TangentRun<double> fast = run_tangent_sweeps(rules, x, initial, lengths, reverse, v, dy, u);
    if (!fast.refusal.empty()) return fast.refusal;

    // On the tape: B = grad(<dy, F>, θ) with create_graph, then <v, B> + <u, F> differentiated
    // w.r.t. θ (∇²φ v + Jᵀ u) and w.r.t. dy (J v), in one pass.
    const std::vector<Tensor<double>> outputs = tape_sequence(cell, x, initial, lengths, reverse);
    const std::vector<Tensor<double>> first = rw::grad(outputs, inputs, dy, {.retain_graph = true, .create_graph = true});
    std::vector<Tensor<double>> roots, seeds;
    for (std::size_t i = 0; i < first.size(); ++i)
        if (first[i].defined() && first[i].requires_grad()) {
            roots.push_back(first[i]);
            seeds.push_back(v[i]);
        }
    for (std::size_t o = 0; o < outputs.size(); ++o) {
        roots.push_back(outputs[o]);
        seeds.push_back(u[o]);
    }
    std::vector<Tensor<double>> targets = inputs;
    targets.insert(targets.end(), dy.begin(), dy.end());
    const std::vector<Tensor<double>> second = rw::grad(roots, targets, seeds);

    const std::vector<std::string> states = cell.state_names();
    for (std::size_t o = 0; o < outputs.size(); ++o)
        differences.push_back(compare(o == 0 ? "J v: output" : "J v: " + states[o - 1] + "_n", fast.output_tangents[o],
                                      second[inputs.size() + o], outputs[o].shape()));
    const CellWeights<double> w = rules.weights();
    std::vector<std::string> names{"x", "weight_ih"};
    if (w.input_bias.defined()) names.push_back("bias_ih");
    if (rules.layout().recurrent > 0) names.push_back("weight_hh");
    if (w.recurrent_bias.defined()) names.push_back("bias_hh");
    for (const auto& s : states) names.push_back(s + "0");
    for (std::size_t i = 0; i < inputs.size(); ++i)
        differences.push_back(compare("Hv+Jᵀu: " + (i < names.size() ? names[i] : std::to_string(i)),
                                      fast.gradient_tangents[i], second[i], inputs[i].shape()));
    return "";
}

}  // namespace rw::nn::fused::detail
