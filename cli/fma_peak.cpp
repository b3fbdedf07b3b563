#include "fma_peak.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <map>
#include <thread>
#include <vector>

#include <xsimd/xsimd.hpp>

namespace rw::cli {

namespace {

using Batch = xsimd::batch<float>;

// Enough independent chains to cover the FMA latency times the number of FMA pipes (5 x 2 on Zen,
// 4 x 2 on recent Intel cores); a multiply-add that shrinks towards a fixed point keeps the
// values normal however long it runs.
constexpr std::size_t chains = 12;

// Seconds for `iterations` rounds of `chains` FMAs; the result is folded into `sink` so the
// compiler keeps the work.
double time_fmas(std::size_t iterations, float& sink) {
    Batch acc[chains];
    for (std::size_t c = 0; c < chains; ++c) acc[c] = Batch(1.0f + 0.01f * float(c));
    const Batch scale(0.999999f), shift(1e-6f);
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < iterations; ++i)
        for (std::size_t c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], scale, shift);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Batch total(0.0f);
    for (const Batch& a : acc) total += a;
    sink = xsimd::hadd(total);
    return seconds;
}

double measure(int threads) {
    constexpr std::size_t iterations = 2'000'000;  // about 10-50 ms a round
    const double flops_per_thread = double(iterations) * chains * Batch::size * 2;
    double best = 0;
    for (int round = 0; round < 5; ++round) {
        std::vector<double> seconds(static_cast<std::size_t>(threads));
        std::vector<float> sinks(static_cast<std::size_t>(threads));
        std::vector<std::thread> workers;
        for (int t = 1; t < threads; ++t)
            workers.emplace_back([&, t] { seconds[std::size_t(t)] = time_fmas(iterations, sinks[std::size_t(t)]); });
        seconds[0] = time_fmas(iterations, sinks[0]);
        for (auto& w : workers) w.join();
        // The slowest thread bounds what the threads did together.
        const double slowest = *std::max_element(seconds.begin(), seconds.end());
        best = std::max(best, flops_per_thread * threads / slowest / 1e9);
    }
    return best;
}

std::map<int, double>& measured() {
    static std::map<int, double> peaks;
    return peaks;
}

}  // namespace

double fma_peak_gflops(int threads) {
    auto found = measured().find(threads);
    if (found == measured().end()) found = measured().emplace(threads, measure(std::max(1, threads))).first;
    return found->second;
}

double remeasure_fma_peak_gflops(int threads) {
    double& peak = measured()[threads];
    peak = std::max(peak, measure(std::max(1, threads)));
    return peak;
}

}  // namespace rw::cli
