// Tape overhead and GEMM-layer overhead, measured in one run.
//
//  (a) a chain of ~1000 tiny ops (add/mul/tanh on 4-element tensors): ns per recorded op for the
//      forward, the backward and both, against the same arithmetic under NoGradGuard;
//  (b) rw::matmul's forward against the raw rw::blas::gemm call on the same float operands,
//      interleaved, for 512x512x512 and 32x256 by 256x1024;
//  (c) the time to free a graph dropped without a backward, per node, for chains of 1e4, 1e5 and
//      1e6 tanh ops (freed in a loop, Note [Iterative teardown], so the cost per node should not
//      grow with the length), sizes alternating within each round, medians.
//
// Targets (reported, not asserted): < 1 us per tiny op forward+backward; matmul within 5% of raw.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <rewind/autograd.hpp>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Keeps the optimiser from dropping a result.
volatile float sink = 0;

// ---- (a) tiny ops ----

constexpr int kSteps = 333;                  // h = tanh(h * w + x): 3 ops a step
constexpr int kOps = 3 * kSteps + 1;         // + the final sum

struct TinyResult {
    double forward_ns_per_op = 0;            // with the tape
    double backward_ns_per_op = 0;
    double total_ns_per_op = 0;              // forward + backward
    double no_grad_forward_ns_per_op = 0;    // same arithmetic, nothing recorded
    double tape_overhead_ns_per_op = 0;      // forward with tape - forward without
};

rw::Tensor<float> tiny_chain(const rw::Tensor<float>& x, const rw::Tensor<float>& w) {
    rw::Tensor<float> h = x;
    for (int i = 0; i < kSteps; ++i) h = rw::tanh(rw::add(rw::mul(h, w), x));
    return rw::sum(h);
}

TinyResult bench_tiny(int repeats) {
    rw::Tensor<float> x(xt::xarray<float>{0.1f, -0.2f, 0.3f, 0.4f}, true);
    rw::Tensor<float> w(xt::xarray<float>{0.9f, 0.8f, -0.7f, 0.6f}, true);
    std::vector<double> forward, backward, total, no_grad;
    const int warmup = std::max(3, repeats / 10);
    for (int r = -warmup; r < repeats; ++r) {
        double no_grad_seconds;
        {
            rw::NoGradGuard guard;
            const auto start = Clock::now();
            rw::Tensor<float> loss = tiny_chain(x, w);
            no_grad_seconds = seconds_since(start);
            sink = sink + loss.item();
        }
        x.zero_grad();
        w.zero_grad();
        const auto start = Clock::now();
        rw::Tensor<float> loss = tiny_chain(x, w);
        const double forward_seconds = seconds_since(start);
        const auto start_backward = Clock::now();
        loss.backward();
        const double backward_seconds = seconds_since(start_backward);
        sink = sink + x.grad().value()(0);
        if (r < 0) continue;
        forward.push_back(forward_seconds);
        backward.push_back(backward_seconds);
        total.push_back(forward_seconds + backward_seconds);
        no_grad.push_back(no_grad_seconds);
    }
    TinyResult result;
    const double to_ns = 1e9 / kOps;
    result.forward_ns_per_op = median(forward) * to_ns;
    result.backward_ns_per_op = median(backward) * to_ns;
    result.total_ns_per_op = median(total) * to_ns;
    result.no_grad_forward_ns_per_op = median(no_grad) * to_ns;
    result.tape_overhead_ns_per_op = result.forward_ns_per_op - result.no_grad_forward_ns_per_op;
    return result;
}

// ---- (b) matmul vs raw GEMM ----

struct MatmulResult {
    std::int64_t m, k, n;
    int repeats;
    double raw_us = 0;
    double op_us = 0;
    double ratio = 0;  // op / raw
    double raw_gflops = 0;
};

xt::xarray<float> random_matrix(std::size_t rows, std::size_t cols, std::mt19937& engine) {
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    xt::xarray<float> value = xt::xarray<float>::from_shape({rows, cols});
    for (float& v : value) v = uniform(engine);
    return value;
}

MatmulResult bench_matmul(std::int64_t m, std::int64_t k, std::int64_t n, int repeats) {
    std::mt19937 engine(42);
    // The op records a node, as in training: its inputs require gradients.
    rw::Tensor<float> a(random_matrix(m, k, engine), true);
    rw::Tensor<float> b(random_matrix(k, n, engine), true);
    xt::xarray<float> c = xt::xarray<float>::from_shape({std::size_t(m), std::size_t(n)});

    auto raw = [&] {
        const auto start = Clock::now();
        rw::blas::gemm(false, false, m, n, k, 1.0f, a.value().data(), k, b.value().data(), n, 0.0f, c.data(), n);
        const double seconds = seconds_since(start);
        sink = sink + c(0, 0);
        return seconds;
    };
    auto op = [&] {
        const auto start = Clock::now();
        rw::Tensor<float> product = rw::matmul(a, b);
        const double seconds = seconds_since(start);
        sink = sink + product.value()(0, 0);
        return seconds;  // the product (and its node) is freed outside the timed region
    };

    std::vector<double> raw_times, op_times;
    const int warmup = std::max(3, repeats / 10);
    for (int r = -warmup; r < repeats; ++r) {
        // Interleaved, alternating which goes first, so drift and cache state hit both alike.
        double t_raw, t_op;
        if (r % 2 == 0) {
            t_raw = raw();
            t_op = op();
        } else {
            t_op = op();
            t_raw = raw();
        }
        if (r < 0) continue;
        raw_times.push_back(t_raw);
        op_times.push_back(t_op);
    }
    MatmulResult result{m, k, n, repeats};
    result.raw_us = median(raw_times) * 1e6;
    result.op_us = median(op_times) * 1e6;
    result.ratio = result.op_us / result.raw_us;
    result.raw_gflops = 2.0 * m * n * k / (result.raw_us * 1e3);
    return result;
}

// ---- (c) dropping a graph ----

struct DropResult {
    std::size_t nodes = 0;
    int rounds = 0;
    double ns_per_node = 0;
};

std::vector<DropResult> bench_drop(int rounds) {
    const std::vector<std::size_t> lengths = {10'000, 100'000, 1'000'000};
    std::vector<std::vector<double>> samples(lengths.size());
    const rw::Tensor<float> x(xt::xarray<float>{0.5f}, true);
    for (int round = 0; round < rounds; ++round)
        for (std::size_t i = 0; i < lengths.size(); ++i) {
            rw::Tensor<float> y = x;
            for (std::size_t op = 0; op < lengths[i]; ++op) y = rw::tanh(y);
            sink = sink + y.item();
            const auto start = Clock::now();
            y = rw::Tensor<float>();  // the last handle: the whole chain is freed here
            samples[i].push_back(seconds_since(start) * 1e9 / double(lengths[i]));
        }
    std::vector<DropResult> results;
    for (std::size_t i = 0; i < lengths.size(); ++i) results.push_back({lengths[i], rounds, median(samples[i])});
    return results;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rewind tape and GEMM-layer overhead"};
    int threads = 1;
    int repeats = 101;
    bool json = false;
    app.add_option("--threads", threads, "BLAS threads (rw::blas::set_num_threads)")->check(CLI::PositiveNumber);
    app.add_option("--repeats", repeats, "timed repeats per measurement (medians are reported)")
        ->check(CLI::PositiveNumber);
    app.add_flag("--json", json, "print one JSON object instead of text");
    CLI11_PARSE(app, argc, argv);

    rw::blas::set_num_threads(threads);

    const TinyResult tiny = bench_tiny(repeats);
    std::vector<MatmulResult> matmuls;
    // The large product takes milliseconds: fewer repeats keep the run short.
    matmuls.push_back(bench_matmul(512, 512, 512, std::max(11, repeats / 2)));
    matmuls.push_back(bench_matmul(32, 256, 1024, repeats * 5));
    // Building the 1e6 chain takes about a second: a few rounds are enough for a median.
    const std::vector<DropResult> drops = bench_drop(std::clamp(repeats / 20, 3, 7));

    if (json) {
        nlohmann::json out;
        out["threads"] = threads;
        out["float_backend"] = rw::blas::float_backend();
        out["tiny_ops"] = {
            {"ops_per_chain", kOps},
            {"elements", 4},
            {"repeats", repeats},
            {"forward_ns_per_op", tiny.forward_ns_per_op},
            {"backward_ns_per_op", tiny.backward_ns_per_op},
            {"forward_backward_ns_per_op", tiny.total_ns_per_op},
            {"no_grad_forward_ns_per_op", tiny.no_grad_forward_ns_per_op},
            {"tape_overhead_ns_per_op", tiny.tape_overhead_ns_per_op},
            {"target_ns_per_op", 1000},
            {"meets_target", tiny.total_ns_per_op < 1000},
        };
        out["matmul"] = nlohmann::json::array();
        for (const auto& r : matmuls)
            out["matmul"].push_back({{"m", r.m}, {"k", r.k}, {"n", r.n}, {"repeats", r.repeats},
                                     {"raw_gemm_us", r.raw_us}, {"matmul_op_us", r.op_us}, {"ratio", r.ratio},
                                     {"raw_gflops", r.raw_gflops}, {"meets_target", r.ratio <= 1.05}});
        out["drop"] = nlohmann::json::array();
        for (const auto& r : drops)
            out["drop"].push_back({{"nodes", r.nodes}, {"rounds", r.rounds}, {"ns_per_node", r.ns_per_node},
                                   {"ratio_to_first", r.ns_per_node / drops.front().ns_per_node}});
        std::cout << out.dump(2) << "\n";
        return 0;
    }

    fmt::print("rewind bench_tape: {} BLAS thread(s), float GEMM on {}\n\n", threads, rw::blas::float_backend());
    fmt::print("(a) tiny ops: a chain of {} add/mul/tanh ops on 4-element float tensors, median of {}\n", kOps,
               repeats);
    fmt::print("    forward, recorded        {:8.1f} ns/op\n", tiny.forward_ns_per_op);
    fmt::print("    backward                 {:8.1f} ns/op\n", tiny.backward_ns_per_op);
    fmt::print("    forward + backward       {:8.1f} ns/op   (target < 1000: {})\n", tiny.total_ns_per_op,
               tiny.total_ns_per_op < 1000 ? "met" : "MISSED");
    fmt::print("    forward, NoGradGuard     {:8.1f} ns/op\n", tiny.no_grad_forward_ns_per_op);
    fmt::print("    recording overhead       {:8.1f} ns/op   (forward recorded - forward without tape)\n\n",
               tiny.tape_overhead_ns_per_op);
    fmt::print("(b) rw::matmul forward vs raw rw::blas::gemm, float, interleaved, medians\n");
    fmt::print("    {:>18} {:>8} {:>12} {:>12} {:>8} {:>9}\n", "shape", "repeats", "raw us", "matmul us", "ratio",
               "raw GF/s");
    for (const auto& r : matmuls)
        fmt::print("    {:>18} {:>8} {:>12.1f} {:>12.1f} {:>8.3f} {:>9.1f}   (target <= 1.05: {})\n",
                   fmt::format("{}x{} * {}x{}", r.m, r.k, r.k, r.n), r.repeats, r.raw_us, r.op_us, r.ratio,
                   r.raw_gflops, r.ratio <= 1.05 ? "met" : "MISSED");
    fmt::print("\n(c) freeing a dropped chain of tanh ops (float, one element), per node, median of {}\n",
               drops.front().rounds);
    fmt::print("    {:>10} {:>12} {:>14}\n", "nodes", "ns/node", "vs 1e4 nodes");
    for (const auto& r : drops)
        fmt::print("    {:>10} {:>12.1f} {:>14.2f}\n", r.nodes, r.ns_per_node, r.ns_per_node / drops.front().ns_per_node);
    return 0;
}
