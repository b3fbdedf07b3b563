#include "rewind/nn/analysis/path_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>

#include "rewind/nn/fused/cell_rules.hpp"

namespace rw::nn {

double median_of(std::vector<double> values) {
    if (values.empty()) return NAN;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

template <class T>
double training_flops(const Recurrent<T>& layer, std::size_t steps, std::size_t batch) {
    const auto& o = layer.options();
    double flops = 0;
    for (std::size_t l = 0; l < o.num_layers; ++l)
        for (std::size_t d = 0; d < layer.num_directions(); ++d) {
            const auto& cell = layer.cell(l, d);
            const auto* rules = cell.usable_fused_rules();
            if (!rules) return 0;
            // Forward GEMMs, then backward's two per forward product (dx/dh and dW).
            flops += 3.0 * double(steps) * rules->forward_flops(batch, cell.input_size(), cell.hidden_size());
        }
    return flops;
}

namespace {

using Clock = std::chrono::steady_clock;

// One step; the fused driver's bytes kept between forward and backward, and its high-water mark
// over the step, go to `memory` (beyond what the driver held before).
template <class T>
double training_step(Recurrent<T>& layer, Tensor<T>& x, fused::DriverMemory& memory) {
    layer.zero_grad();
    x.zero_grad();
    const std::size_t before = fused::driver_memory().live;
    fused::reset_driver_memory_peak();
    Tensor<T> loss = sum(layer.forward(x).output);
    memory.live = fused::driver_memory().live - before;
    loss.backward();
    memory.peak = fused::driver_memory().peak - before;
    return double(loss.item()) + double(x.grad().value().data()[0]);
}

}  // namespace

template <class T>
PathBenchResult bench_paths(Recurrent<T>& layer, const Tensor<T>& input, const PathBenchOptions& options) {
    const ExecutionPath before = layer.path();
    // The caller's leaf itself when it already asks for a gradient: a copy of a long sequence's
    // input would show in the memory the rounds measure.
    Tensor<T> x = input.is_leaf() && input.requires_grad() ? input : Tensor<T>(input.value(), true);
    const bool batch_first = layer.options().batch_first;
    PathBenchResult result;
    result.flops = training_flops(layer, input.size(batch_first ? 1 : 0), input.size(batch_first ? 0 : 1));
    auto timed = [&](ExecutionPath path, std::vector<double>* samples) {
        layer.set_path(path);
        fused::DriverMemory memory;
        const auto start = Clock::now();
        result.checksum += training_step(layer, x, memory);
        if (path == ExecutionPath::fused) {
            result.fused_saved_bytes = std::max(result.fused_saved_bytes, memory.live);
            result.fused_peak_bytes = std::max(result.fused_peak_bytes, memory.peak);
        }
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        if (samples) samples->push_back(ms);
    };
    for (int round = 0; round < options.warmup + options.repeats; ++round) {
        const bool record = round >= options.warmup;
        timed(ExecutionPath::fused, record ? &result.fused_ms : nullptr);
        if (round == 0) {
            result.fused_ran = layer.uses_fused();
            result.path_note = layer.path_note();
            result.recompute_segment = layer.last_recompute_segment();
        }
        if (options.generic) timed(ExecutionPath::generic, record ? &result.generic_ms : nullptr);
        if (options.each_round) options.each_round(record);
    }
    layer.set_path(before);
    result.fused_median_ms = median_of(result.fused_ms);
    result.generic_median_ms = median_of(result.generic_ms);
    result.generic_over_fused = result.generic_median_ms / result.fused_median_ms;
    const double gflop = result.flops > 0 ? result.flops / 1e6 : NAN;
    result.fused_gflops = gflop / result.fused_median_ms;
    result.generic_gflops = gflop / result.generic_median_ms;
    return result;
}

std::string PathBenchResult::to_string() const {
    std::string line = fmt::format("fused {:.3f} ms", fused_median_ms);
    if (!std::isnan(generic_median_ms))
        line += fmt::format(", generic {:.3f} ms, generic/fused {:.2f}x", generic_median_ms, generic_over_fused);
    line += fmt::format(" (medians of {} paired rounds)", fused_ms.size());
    if (flops > 0) line += fmt::format(", fused {:.1f} GFLOP/s", fused_gflops);
    line += fused_ran ? ", fused path ran" : ", the fused rounds ran generic: " + path_note;
    return line;
}

template <class T>
PathBenchResult bench_cell_paths(const CellFactory<T>& factory, const CellBenchSizes& sizes,
                                 const PathBenchOptions& options) {
    auto layer = std::make_shared<Recurrent<T>>(factory, RecurrentOptions{.input_size = sizes.input,
                                                 .hidden_size = sizes.hidden,
                                                 .num_layers = sizes.layers,
                                                 .bidirectional = sizes.bidirectional,
                                                 .seed = sizes.seed});
    Generator generator(sizes.seed ^ 0x9e3779b97f4a7c15ULL);  // a stream apart from the initialisation
    xt::xarray<T> x = checked_array<T>("bench_cell_paths input", {sizes.steps, sizes.batch, sizes.input});
    for (T& v : x) v = T(generator.normal());
    return bench_paths(*layer, Tensor<T>(std::move(x), true), options);
}

template PathBenchResult bench_paths(Recurrent<float>&, const Tensor<float>&, const PathBenchOptions&);
template PathBenchResult bench_paths(Recurrent<double>&, const Tensor<double>&, const PathBenchOptions&);
template PathBenchResult bench_cell_paths(const CellFactory<float>&, const CellBenchSizes&, const PathBenchOptions&);
template PathBenchResult bench_cell_paths(const CellFactory<double>&, const CellBenchSizes&, const PathBenchOptions&);
template double training_flops(const Recurrent<float>&, std::size_t, std::size_t);
template double training_flops(const Recurrent<double>&, std::size_t, std::size_t);

}  // namespace rw::nn
