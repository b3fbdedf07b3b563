#pragma once
// Every op of ops.hpp (and every internal op a backward rule calls) as one or more OpCase of
// jvp_checks.hpp, in float64 on random inputs, broadcasting forms included. The list drives
// test_ops_jvp.cpp, which fails when an op that ops.hpp declares or autograd/src records has no
// case here.

#include <functional>
#include <optional>

#include "jvp_checks.hpp"

namespace rw::jvp_checks {

using Fn = std::vector<D> (*)(const std::vector<D>&);

inline D uniform(const Shape& shape, std::uint64_t seed, double low = -1.0, double high = 1.0) {
    return D(op_checks::random_array(shape, seed, low, high));
}

// ±[0.2, 1): ops with a kink at 0 (relu, abs), so central differences do not straddle it.
inline D away_from_zero(const Shape& shape, std::uint64_t seed) {
    return op_checks::input_away_from_zero(shape, seed).detach();
}

inline TensorFunction<double> one(std::function<D(const std::vector<D>&)> f) {
    return [f](const std::vector<D>& x) -> std::vector<D> { return {f(x)}; };
}

// The backward of `op` at a fixed point as a function of its output's gradient (with
// create_graph, so that it is recorded): the internal adjoint ops only backward rules call.
inline TensorFunction<double> backward_of(std::function<D(const D&)> op, Array at) {
    return [op, at](const std::vector<D>& g) -> std::vector<D> {
        const D x(at, true);
        EnableGradGuard recording(true);
        return {grad<double>({op(x)}, {x}, {g[0]}, {.create_graph = true})[0]};
    };
}

inline void add_binary(std::vector<OpCase>& cases, const std::string& op, std::function<D(const D&, const D&)> f,
                       double low_b = -1.0, double high_b = 1.0) {
    for (const auto& [a, b] : op_checks::broadcast_patterns)
        cases.push_back({op, shape_string(a) + " with " + shape_string(b),
                         one([f](const std::vector<D>& x) { return f(x[0], x[1]); }),
                         {uniform(a, 1), uniform(b, 2, low_b, high_b)}});
}

inline void add_unary(std::vector<OpCase>& cases, const std::string& op, std::function<D(const D&)> f, D x,
                      std::string label = "[2, 3]") {
    cases.push_back({op, std::move(label), one([f](const std::vector<D>& in) { return f(in[0]); }), {std::move(x)}});
}

inline std::vector<OpCase> elementwise_cases() {
    std::vector<OpCase> cases;
    add_binary(cases, "add", [](const D& a, const D& b) { return add(a, b); });
    add_binary(cases, "sub", [](const D& a, const D& b) { return sub(a, b); });
    add_binary(cases, "mul", [](const D& a, const D& b) { return mul(a, b); });
    add_binary(cases, "div", [](const D& a, const D& b) { return div(a, b); }, 0.5, 1.5);
    add_binary(cases, "maximum", [](const D& a, const D& b) { return maximum(a, b); });
    add_binary(cases, "minimum", [](const D& a, const D& b) { return minimum(a, b); });
    const Array tied{{0.5, -0.25, 1.0}, {0.0, 0.75, -1.0}};
    cases.push_back({"maximum", "ties (half of each tangent)", one([](const std::vector<D>& x) { return maximum(x[0], x[1]); }),
                     {D(tied), D(tied)}, false});
    cases.push_back({"minimum", "ties (half of each tangent)", one([](const std::vector<D>& x) { return minimum(x[0], x[1]); }),
                     {D(tied), D(tied)}, false});
    const xt::xarray<bool> condition{{true, false, true}, {false, false, true}};
    cases.push_back({"where", "[2, 3] ? [3] : [2, 1]",
                     one([condition](const std::vector<D>& x) { return rw::where(condition, x[0], x[1]); }),
                     {uniform({3}, 3), uniform({2, 1}, 4)}});
    cases.push_back({"where", "[3] ? [2, 3] : []",
                     one([](const std::vector<D>& x) { return rw::where(xt::xarray<bool>{true, false, true}, x[0], x[1]); }),
                     {uniform({2, 3}, 5), uniform({}, 6)}});
    const Shape s{2, 3};
    add_unary(cases, "neg", [](const D& x) { return neg(x); }, uniform(s, 10));
    add_unary(cases, "add_scalar", [](const D& x) { return add_scalar(x, 0.7); }, uniform(s, 11));
    add_unary(cases, "mul_scalar", [](const D& x) { return mul_scalar(x, -1.3); }, uniform(s, 12));
    add_unary(cases, "tanh", [](const D& x) { return tanh(x); }, uniform({40}, 13, -3, 3), "[40] (the xsimd path)");
    add_unary(cases, "tanh", [](const D& x) { return tanh(x); }, uniform(s, 14));
    add_unary(cases, "sigmoid", [](const D& x) { return sigmoid(x); }, uniform({40}, 15, -3, 3), "[40] (the xsimd path)");
    add_unary(cases, "sigmoid", [](const D& x) { return sigmoid(x); }, uniform(s, 16));
    add_unary(cases, "relu", [](const D& x) { return relu(x); }, away_from_zero(s, 17));
    add_unary(cases, "exp", [](const D& x) { return exp(x); }, uniform({40}, 18));
    add_unary(cases, "log", [](const D& x) { return log(x); }, uniform(s, 19, 0.5, 2.0));
    add_unary(cases, "sqrt", [](const D& x) { return sqrt(x); }, uniform(s, 20, 0.5, 2.0));
    add_unary(cases, "pow", [](const D& x) { return pow(x, 2.5); }, uniform(s, 21, 0.5, 2.0), "x^2.5");
    add_unary(cases, "pow", [](const D& x) { return pow(x, 3.0); }, uniform(s, 22), "x^3");
    add_unary(cases, "pow", [](const D& x) { return pow(x, 0.0); }, uniform(s, 23), "x^0 (a zero derivative)");
    add_unary(cases, "clamp", [](const D& x) { return clamp(x, -0.5, 0.5); }, uniform({4, 5}, 24));
    add_unary(cases, "rsqrt", [](const D& x) { return rsqrt(x); }, uniform(s, 25, 0.5, 2.0));
    add_unary(cases, "abs", [](const D& x) { return abs(x); }, away_from_zero(s, 26));
    add_unary(cases, "softplus", [](const D& x) { return softplus(x); }, uniform(s, 27, -3, 3));
    add_unary(cases, "softplus", [](const D& x) { return softplus(x, 2.0, 1.0); }, uniform({4, 5}, 28),
              "beta 2, threshold 1 (some elements linear)");
    add_unary(cases, "log_sigmoid", [](const D& x) { return log_sigmoid(x); }, uniform(s, 29, -3, 3));
    cases.push_back({"tanh_backward", "[2, 3]", one([](const std::vector<D>& x) { return tanh_backward(x[0], x[1]); }),
                     {uniform(s, 30), uniform(s, 31)}});
    cases.push_back({"sigmoid_backward", "[2, 3]", one([](const std::vector<D>& x) { return sigmoid_backward(x[0], x[1]); }),
                     {uniform(s, 32), uniform(s, 33, 0.1, 0.9)}});
    const Array mask = op_checks::random_array(s, 34, 0.0, 2.0);
    add_unary(cases, "mul_mask", [mask](const D& x) { return mul_mask(x, mask); }, uniform(s, 35));
    return cases;
}

inline std::vector<OpCase> shape_cases() {
    std::vector<OpCase> cases;
    auto binary = [&](const std::string& op, const std::string& label, std::function<D(const D&, const D&)> f, D a, D b) {
        cases.push_back({op, label, one([f](const std::vector<D>& x) { return f(x[0], x[1]); }), {a, b}});
    };
    binary("matmul", "[2, 3] x [3, 4]", [](const D& a, const D& b) { return matmul(a, b); }, uniform({2, 3}, 40), uniform({3, 4}, 41));
    binary("matmul", "[2, 2, 3] x [3, 4]", [](const D& a, const D& b) { return matmul(a, b); }, uniform({2, 2, 3}, 42),
           uniform({3, 4}, 43));
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            binary("gemm", fmt::format("transposes {} {}", ta, tb), [ta, tb](const D& a, const D& b) { return gemm(a, b, ta, tb); },
                   uniform(ta ? Shape{3, 2} : Shape{2, 3}, 44), uniform(tb ? Shape{4, 3} : Shape{3, 4}, 45));
    binary("gemm", "[2, 2, 3] x [4, 3]^T", [](const D& a, const D& b) { return gemm(a, b, false, true); }, uniform({2, 2, 3}, 46),
           uniform({4, 3}, 47));
    add_unary(cases, "transpose", [](const D& x) { return transpose(x); }, uniform({2, 3}, 48));
    add_unary(cases, "permute", [](const D& x) { return permute(x, {2, 0, 1}); }, uniform({2, 3, 4}, 49), "[2, 3, 4] {2, 0, 1}");
    add_unary(cases, "reshape", [](const D& x) { return reshape(x, {3, 2}); }, uniform({2, 3}, 50));
    add_unary(cases, "squeeze", [](const D& x) { return squeeze(x, 1); }, uniform({2, 1, 3}, 51));
    add_unary(cases, "unsqueeze", [](const D& x) { return unsqueeze(x, 2); }, uniform({2, 3}, 52));
    add_unary(cases, "slice", [](const D& x) { return slice(x, 1, 1, 3); }, uniform({2, 4, 3}, 53));
    cases.push_back({"concat", "three parts on axis 1",
                     one([](const std::vector<D>& x) { return concat(x, 1); }),
                     {uniform({2, 1, 3}, 54), uniform({2, 2, 3}, 55), uniform({2, 3, 3}, 56)}});
    cases.push_back({"stack", "three parts on axis 1", one([](const std::vector<D>& x) { return stack(x, 1); }),
                     {uniform({2, 3}, 57), uniform({2, 3}, 58), uniform({2, 3}, 59)}});
    cases.push_back({"unstack", "[2, 3, 4] on axis 1", [](const std::vector<D>& x) { return unstack(x[0], 1); },
                     {uniform({2, 3, 4}, 60)}});
    cases.push_back({"split", "[2, 5] into 1, 3, 1", [](const std::vector<D>& x) { return split(x[0], {1, 3, 1}, 1); },
                     {uniform({2, 5}, 61)}});
    cases.push_back({"chunk", "[5, 2] in 2", [](const std::vector<D>& x) { return chunk(x[0], 2, 0); }, {uniform({5, 2}, 62)}});
    add_unary(cases, "index_select", [](const D& x) { return index_select(x, 0, {2, 0, 2, 1}); }, uniform({3, 2}, 63),
              "repeated rows");
    add_unary(cases, "broadcast_to", [](const D& x) { return broadcast_to(x, {2, 3}); }, uniform({3}, 64), "[3] to [2, 3]");
    add_unary(cases, "broadcast_to", [](const D& x) { return broadcast_to(x, {2, 3}); }, uniform({2, 1}, 65), "[2, 1] to [2, 3]");
    add_unary(cases, "sum_to", [](const D& x) { return sum_to(x, {3}); }, uniform({2, 3}, 66), "[2, 3] to [3]");
    add_unary(cases, "sum_to", [](const D& x) { return sum_to(x, {2, 1}); }, uniform({2, 3}, 67), "[2, 3] to [2, 1]");
    cases.push_back({"pad_slice", "backward of slice", backward_of([](const D& x) { return slice(x, 1, 1, 3); },
                                                                   op_checks::random_array({2, 4}, 68, -1, 1)),
                     {uniform({2, 2}, 69)}});
    cases.push_back({"index_add", "backward of index_select",
                     backward_of([](const D& x) { return index_select(x, 0, {2, 0, 2}); }, op_checks::random_array({3, 2}, 70, -1, 1)),
                     {uniform({3, 2}, 71)}});
    return cases;
}

inline std::vector<OpCase> reduction_cases() {
    std::vector<OpCase> cases;
    const Shape s{2, 3, 4};
    add_unary(cases, "sum", [](const D& x) { return sum(x); }, uniform(s, 80), "all");
    add_unary(cases, "sum", [](const D& x) { return sum(x, {0, 2}); }, uniform(s, 81), "axes {0, 2}");
    add_unary(cases, "sum", [](const D& x) { return sum(x, {1}, true); }, uniform(s, 82), "axis 1 kept");
    add_unary(cases, "mean", [](const D& x) { return mean(x); }, uniform(s, 83), "all");
    add_unary(cases, "mean", [](const D& x) { return mean(x, {1}, true); }, uniform(s, 84), "axis 1 kept");
    add_unary(cases, "var", [](const D& x) { return var(x); }, uniform(s, 85), "all, unbiased");
    add_unary(cases, "var", [](const D& x) { return var(x, {1}, false, true); }, uniform(s, 86), "axis 1, biased, kept");
    add_unary(cases, "var", [](const D& x) { return var(x, {0, 2}); }, uniform(s, 87), "axes {0, 2}");
    add_unary(cases, "softmax", [](const D& x) { return softmax(x, 1); }, uniform({3, 4}, 88, -2, 2), "axis 1");
    add_unary(cases, "softmax", [](const D& x) { return softmax(x, 0); }, uniform(s, 89, -2, 2), "axis 0 of 3");
    add_unary(cases, "log_softmax", [](const D& x) { return log_softmax(x, 1); }, uniform({3, 4}, 90, -2, 2), "axis 1");
    add_unary(cases, "log_softmax", [](const D& x) { return log_softmax(x, 2); }, uniform(s, 91, -2, 2), "axis 2 of 3");
    cases.push_back({"layer_norm", "weight and bias", one([](const std::vector<D>& x) { return layer_norm(x[0], {4}, x[1], x[2]); }),
                     {uniform(s, 92), uniform({4}, 93), uniform({4}, 94)}});
    cases.push_back({"layer_norm", "bias only", one([](const std::vector<D>& x) { return layer_norm(x[0], {4}, D(), x[1]); }),
                     {uniform(s, 95), uniform({4}, 96)}});
    cases.push_back({"layer_norm", "over [3, 4], weight only",
                     one([](const std::vector<D>& x) { return layer_norm(x[0], {3, 4}, x[1], D(), 1e-3); }),
                     {uniform(s, 97), uniform({3, 4}, 98)}});
    add_unary(cases, "layer_norm", [](const D& x) { return layer_norm(x, {4}); }, uniform(s, 99), "no weight or bias");
    return cases;
}

inline std::vector<OpCase> loss_cases() {
    std::vector<OpCase> cases;
    const std::vector<std::int64_t> targets{1, 0, 3};
    const Shape logits{3, 4};
    for (auto [reduction, name] : {std::pair{Reduction::mean, "mean"}, std::pair{Reduction::sum, "sum"}, std::pair{Reduction::none, "none"}}) {
        const auto r = reduction;
        add_unary(cases, "cross_entropy", [targets, r](const D& z) { return cross_entropy(z, targets, std::nullopt, r); },
                  uniform(logits, 100, -2, 2), std::string("class targets, ") + name);
        add_unary(cases, "cross_entropy", [targets, r](const D& z) { return cross_entropy(z, targets, Array{0.5, 0.0, 2.0}, r); },
                  uniform(logits, 101, -2, 2), std::string("class targets, mask with a zero, ") + name);
        cases.push_back({"cross_entropy", std::string("probability targets, ") + name,
                         one([r](const std::vector<D>& x) { return cross_entropy(x[0], x[1], r); }),
                         {uniform(logits, 102, -2, 2), uniform(logits, 103, 0, 1)}});
        cases.push_back({"mse_loss", name, one([r](const std::vector<D>& x) { return mse_loss(x[0], x[1], r); }),
                         {uniform({2, 3}, 104), uniform({2, 3}, 105)}});
    }
    // A generator per call: jvp, vjp and the differences then all draw the same mask.
    for (double p : {0.0, 0.3, 1.0})
        add_unary(cases, "dropout", [p](const D& x) { Generator g(7); return dropout(x, p, true, g); }, uniform({4, 5}, 106),
                  fmt::format("training, p = {}{}", p, p == 1.0 ? " (a zero derivative)" : ""));
    add_unary(cases, "dropout", [](const D& x) { Generator g(7); return dropout(x, 0.3, false, g); }, uniform({4, 5}, 107),
              "evaluation");
    return cases;
}

// checkpoint over two inputs and a parameter W (a leaf read by the function; its tangent is
// exercised by the HVP tests): ys = (tanh(x W^T + h), sigmoid(h) x W^T).
inline OpCase checkpoint_case() {
    const D w(op_checks::random_array({3, 2}, 110, -1, 1), true);
    const CheckpointFn<double> fn = [w](const std::vector<D>& in) -> std::vector<D> {
        const D product = gemm(in[0], w, false, true);
        return {tanh(add(product, in[1])), mul(sigmoid(in[1]), product)};
    };
    return {"checkpoint", "two inputs, one parameter",
            [fn, w](const std::vector<D>& in) { return checkpoint<double>("jvp_case", fn, in, {w}); },
            {uniform({4, 2}, 111), uniform({4, 3}, 112)}};
}

inline std::vector<OpCase> all_cases() {
    std::vector<OpCase> cases;
    for (auto part : {elementwise_cases(), shape_cases(), reduction_cases(), loss_cases()})
        cases.insert(cases.end(), part.begin(), part.end());
    cases.push_back(checkpoint_case());
    return cases;
}

}  // namespace rw::jvp_checks
