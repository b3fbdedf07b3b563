// Backpropagation through time written out by hand, the way the textbooks derive it, for an
// Elman RNN
//     h_t = tanh(W_hh h_(t-1) + W_xh x_t + b),   y_t = W_hy h_t,   L = sum_t 1/2 ||y_t - target_t||^2
// (summed over the batch too). Going back from t = T with delta_(T+1) = 0:
//     e_t     = y_t - target_t
//     delta_t = dL/dh_t = W_hy^T e_t + W_hh^T a_(t+1)       (the recursion over time)
//     a_t     = delta_t * (1 - h_t^2)                        (through tanh' = 1 - tanh^2)
// and every weight is shared by all steps, so its gradient is a sum over them:
//     dL/dW_hy = sum_t e_t h_t^T    dL/dW_hh = sum_t a_t h_(t-1)^T    dL/dW_xh = sum_t a_t x_t^T
//     dL/db    = sum_t a_t          dL/dh_0  = W_hh^T a_1
// These sums are compared with rewind's tape (the same network built from ops) and with central
// differences of L, all in float64; the largest relative error per parameter is printed.
// tests/test_examples.cpp asserts both comparisons below 1e-8.
//
//   build-dir/bin/bptt_by_hand [--steps T] [--batch B] [--hidden H] [--eps E] [--tolerance R] [--json] [--seed S]

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xmath.hpp>

#include <rewind/autograd.hpp>

#include "common.hpp"

using namespace rw;
using Array = xt::xarray<double>;

namespace {

// C = op(A) op(B) + beta C for 2-D arrays, through rewind's GEMM layer.
void multiply(Array& c, const Array& a, bool transpose_a, const Array& b, bool transpose_b, double beta) {
    const auto m = std::int64_t(transpose_a ? a.shape(1) : a.shape(0));
    const auto k = std::int64_t(transpose_a ? a.shape(0) : a.shape(1));
    const auto n = std::int64_t(transpose_b ? b.shape(0) : b.shape(1));
    blas::gemm(transpose_a, transpose_b, m, n, k, 1.0, a.data(), std::int64_t(a.shape(1)), b.data(),
               std::int64_t(b.shape(1)), beta, c.data(), n);
}

// The network's parameters and initial state, in the order they are reported.
struct Elman {
    Array w_xh, w_hh, b, w_hy, h0;  // [H, I], [H, H], [H], [O, H], [B, H]
    std::vector<Array*> all() { return {&w_xh, &w_hh, &b, &w_hy, &h0}; }
};
const std::vector<std::string> kNames{"W_xh", "W_hh", "b", "W_hy", "h_0"};

struct Data {
    std::vector<Array> x, target;  // per step: [B, I] and [B, O]
};

// The forward pass kept for the backward one: h_0 .. h_T and the errors e_1 .. e_T.
struct Forward {
    std::vector<Array> h, e;
    double loss = 0;
};

Forward forward(const Elman& net, const Data& data) {
    Forward run;
    run.h.push_back(net.h0);
    const std::size_t batch = net.h0.shape(0), hidden = net.w_hh.shape(0), outputs = net.w_hy.shape(0);
    for (std::size_t t = 0; t < data.x.size(); ++t) {
        Array z = xt::zeros<double>({batch, hidden});
        multiply(z, run.h.back(), false, net.w_hh, true, 0.0);
        multiply(z, data.x[t], false, net.w_xh, true, 1.0);
        z += net.b;
        for (double& v : z) v = std::tanh(v);
        run.h.push_back(std::move(z));
        Array y = xt::zeros<double>({batch, outputs});
        multiply(y, run.h.back(), false, net.w_hy, true, 0.0);
        run.e.push_back(y - data.target[t]);
        run.loss += 0.5 * xt::sum(run.e.back() * run.e.back())();
    }
    return run;
}

// The textbook sums, with ||delta_t|| per step for the table.
Elman bptt_by_hand(const Elman& net, const Data& data, const Forward& run, std::vector<double>& delta_norms) {
    Elman grad{xt::zeros_like(net.w_xh), xt::zeros_like(net.w_hh), xt::zeros_like(net.b), xt::zeros_like(net.w_hy),
               xt::zeros_like(net.h0)};
    const std::size_t steps = data.x.size();
    delta_norms.assign(steps, 0.0);
    Array a_next = xt::zeros_like(net.h0);  // a_(T+1) = 0
    for (std::size_t t = steps; t >= 1; --t) {
        const Array& e = run.e[t - 1];
        const Array& h = run.h[t];
        multiply(grad.w_hy, e, true, h, false, 1.0);  // += e_t^T h_t (rows are the batch)
        Array delta = xt::zeros_like(h);
        multiply(delta, e, false, net.w_hy, false, 0.0);     // W_hy^T e_t
        multiply(delta, a_next, false, net.w_hh, false, 1.0);  // + W_hh^T a_(t+1)
        delta_norms[t - 1] = std::sqrt(xt::sum(delta * delta)());
        const Array a = delta * (1.0 - h * h);
        multiply(grad.w_hh, a, true, run.h[t - 1], false, 1.0);
        multiply(grad.w_xh, a, true, data.x[t - 1], false, 1.0);
        grad.b += xt::sum(a, {0});
        a_next = a;
    }
    multiply(grad.h0, a_next, false, net.w_hh, false, 0.0);  // W_hh^T a_1
    return grad;
}

// The same network on rewind's tape; backward() fills each leaf's gradient.
Elman bptt_on_the_tape(const Elman& net, const Data& data) {
    Elman copy = net;
    std::vector<Tensor<double>> leaves;
    for (Array* value : copy.all()) leaves.emplace_back(*value, /*requires_grad=*/true);
    const Tensor<double>&w_xh = leaves[0], &w_hh = leaves[1], &b = leaves[2], &w_hy = leaves[3];
    Tensor<double> h = leaves[4];
    Tensor<double> loss = Tensor<double>::scalar(0.0);
    for (std::size_t t = 0; t < data.x.size(); ++t) {
        h = tanh(gemm(h, w_hh, false, true) + gemm(Tensor<double>(data.x[t]), w_xh, false, true) + b);
        const Tensor<double> error = gemm(h, w_hy, false, true) - Tensor<double>(data.target[t]);
        loss = loss + 0.5 * sum(error * error);
    }
    loss.backward();
    for (std::size_t i = 0; i < leaves.size(); ++i) *copy.all()[i] = leaves[i].grad().value();
    return copy;
}

// Central differences of L, one element at a time.
Elman finite_differences(const Elman& net, const Data& data, double eps) {
    Elman point = net, grad = net;
    for (std::size_t p = 0; p < kNames.size(); ++p) {
        Array& value = *point.all()[p];
        Array& slope = *grad.all()[p];
        for (std::size_t i = 0; i < value.size(); ++i) {
            const double original = value.data()[i];
            value.data()[i] = original + eps;
            const double plus = forward(point, data).loss;
            value.data()[i] = original - eps;
            const double minus = forward(point, data).loss;
            value.data()[i] = original;
            slope.data()[i] = (plus - minus) / (2 * eps);
        }
    }
    return grad;
}

// max_k |a_k - b_k| / max_k |b_k|: relative to the tensor's largest entry, since an element-wise
// ratio of two near-zero entries measures only the finite differences' round-off.
double relative_error(const Array& a, const Array& b) {
    const double scale = xt::amax(xt::abs(b))();
    return scale == 0 ? xt::amax(xt::abs(a))() : xt::amax(xt::abs(a - b))() / scale;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"BPTT written out by hand for an Elman RNN, against the tape and finite differences (float64)"};
    examples::CommonOptions common;
    std::size_t steps = 20, batch = 3, input_size = 3, hidden = 8, outputs = 2;
    double eps = 3e-5, tolerance = 1e-8;  // eps near (round-off / truncation)^(1/3) for this L
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "sequence length T")->check(CLI::Range(1, 10000))->capture_default_str();
    app.add_option("--batch", batch, "sequences B")->check(CLI::Range(1, 1000))->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size H")->check(CLI::Range(1, 1000))->capture_default_str();
    app.add_option("--eps", eps, "central-difference step")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--tolerance", tolerance,
                   "largest relative error accepted (the finite differences' round-off grows with L, so long "
                   "sequences need more)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    Generator generator(common.seed);
    const double bound = 1.0 / std::sqrt(double(hidden));  // PyTorch's initialisation of nn.RNN
    Elman net{examples::uniform_array<double>({hidden, input_size}, generator, bound),
              examples::uniform_array<double>({hidden, hidden}, generator, bound),
              examples::uniform_array<double>({hidden}, generator, bound),
              examples::uniform_array<double>({outputs, hidden}, generator, bound),
              examples::uniform_array<double>({batch, hidden}, generator, 0.5)};
    Data data;
    for (std::size_t t = 0; t < steps; ++t) {
        data.x.push_back(examples::uniform_array<double>({batch, input_size}, generator));
        data.target.push_back(examples::uniform_array<double>({batch, outputs}, generator));
    }

    const Forward run = forward(net, data);
    std::vector<double> delta_norms;
    Elman hand = bptt_by_hand(net, data, run, delta_norms);
    Elman tape = bptt_on_the_tape(net, data);
    Elman numeric = finite_differences(net, data, eps);

    fmt::print("Elman RNN, T = {}, B = {}, I = {}, H = {}, O = {}; L = {:.6f}\n\n", steps, batch, input_size, hidden,
               outputs, run.loss);
    fmt::print("the delta recursion, ||dL/dh_t|| (every step has its own loss term, so nothing vanishes):\n");
    const std::size_t every = std::max<std::size_t>(1, steps / 10);
    for (std::size_t t = steps; t >= 1; --t)
        if (t == steps || t == 1 || t % every == 0) fmt::print("  t = {:4}  {:.6f}\n", t, delta_norms[t - 1]);

    fmt::print("\nlargest relative error, max |a - b| / max |b| per tensor (float64, eps {:g}):\n", eps);
    fmt::print("  {:<6} {:>10}  {:>14} {:>16}\n", "tensor", "shape", "hand vs tape", "hand vs numeric");
    nlohmann::json vs_tape, vs_numeric;
    double worst_tape = 0, worst_numeric = 0;
    for (std::size_t p = 0; p < kNames.size(); ++p) {
        const double e_tape = relative_error(*hand.all()[p], *tape.all()[p]);
        const double e_numeric = relative_error(*hand.all()[p], *numeric.all()[p]);
        fmt::print("  {:<6} {:>10}  {:>14.3e} {:>16.3e}\n", kNames[p], shape_string(to_shape(hand.all()[p]->shape())),
                   e_tape, e_numeric);
        vs_tape[kNames[p]] = e_tape;
        vs_numeric[kNames[p]] = e_numeric;
        worst_tape = std::max(worst_tape, e_tape);
        worst_numeric = std::max(worst_numeric, e_numeric);
    }
    const bool agree = worst_tape < tolerance && worst_numeric < tolerance;
    fmt::print("worst: hand vs tape {:.3e}, hand vs numeric {:.3e}: {} (tolerance {:g})\n", worst_tape, worst_numeric,
               agree ? "the hand-written sums agree" : "DISAGREE", tolerance);
    examples::print_json(json, {{"steps", steps},
                                {"loss", run.loss},
                                {"hand_vs_tape", vs_tape},
                                {"hand_vs_numeric", vs_numeric},
                                {"max_hand_vs_tape", worst_tape},
                                {"max_hand_vs_numeric", worst_numeric}});
    return agree ? 0 : 1;
}
