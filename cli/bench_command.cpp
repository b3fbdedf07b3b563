// rewind bench: one training step of a recurrent layer (forward, loss = sum of the output, full
// backward to the input and every weight), float32, fused vs generic through the library's
// nn::bench_paths (path_bench.hpp), with optionally oneDNN's own RNN primitives and
// rw::blas::gemm on a comparable size as the machine's practical peak timed in the same rounds,
// so load from other processes hits them alike; medians are reported.
//
// FLOPs of a step: 3x the forward GEMMs the cells' fused rules state (2 * T * B * G * H * (I + H)
// per layer and direction for the built-in cells, G = 4 LSTM, 3 GRU, 1 RNN; with proj_size P,
// 2 * T * B * H * (G * (I + P) + P)). The sgemm reference is [T*B, I+P] x [I+P, G*H] (at most 8192
// rows; P = H without projection), the shape of the gate GEMMs of a step as one product.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <rewind/autograd/gemm.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/layers/cell_table.hpp>

#include "commands.hpp"
#include "deepbench.hpp"
#include "fma_peak.hpp"
#include "onednn_peer.hpp"

namespace rw::cli {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct BenchRequest {
    LayerConfig layer{.cell = "lstm", .input_size = 256, .hidden_size = 256};
    std::size_t steps = 100, batch = 32;
    int threads = 1;
    int repeats = 10;
    int warmup = 2;
    std::string peer;
    bool json = false;
    bool skip_generic = false;
    bool recompute = false;
    std::size_t recompute_every = 0;  // 0: about sqrt(T)
    bool suite = false;
    bool list = false;
    DeepbenchRequest deepbench;  // --deepbench and its options
};

// The same layer and input on either path.
class RewindStep {
public:
    explicit RewindStep(const BenchRequest& r) {
        nn::RecurrentOptions options = r.layer.recurrent_options();
        options.seed = 1;
        options.recompute = {.enabled = r.recompute || r.recompute_every > 0, .segment = r.recompute_every};
        layer_ = nn::make_recurrent<float>(r.layer.cell, options);
        Generator generator(2);
        xt::xarray<float> x = checked_array<float>("bench input", {r.steps, r.batch, r.layer.input_size});
        for (auto& v : x) v = static_cast<float>(generator.uniform(-1, 1));
        x_ = Tensor<float>(std::move(x), true);
    }

    nn::Recurrent<float>& layer() { return *layer_; }
    const Tensor<float>& x() const { return x_; }

private:
    std::shared_ptr<nn::Recurrent<float>> layer_;
    Tensor<float> x_;
};

class SgemmStep {
public:
    SgemmStep(std::size_t m, std::size_t n, std::size_t k) : m_(m), n_(n), k_(k), a_(m * k), b_(k * n), c_(m * n) {
        Generator generator(3);
        for (auto& v : a_) v = static_cast<float>(generator.uniform(-1, 1));
        for (auto& v : b_) v = static_cast<float>(generator.uniform(-1, 1));
    }
    double run() {
        const auto start = Clock::now();
        blas::gemm(false, false, m_, n_, k_, 1.0f, a_.data(), k_, b_.data(), n_, 0.0f, c_.data(), n_);
        return ms_since(start);
    }
    double flops() const { return 2.0 * double(m_) * double(n_) * double(k_); }
    float checksum() const { return c_[0]; }

private:
    std::size_t m_, n_, k_;
    std::vector<float> a_, b_, c_;
};

// The process's resident-set high-water mark (getrusage gives KiB on Linux).
std::size_t peak_rss_bytes() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return std::size_t(usage.ru_maxrss) * 1024;
}

double max_abs_difference(const float* a, const float* b, std::size_t n) {
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, double(std::abs(a[i] - b[i])));
    return worst;
}

// Before timing anything: the peer must compute the same layer (output and dL/dx).
std::pair<double, double> compare_with_peer(RewindStep& rewind, OnednnRnnStep& peer) {
    peer.run();
    auto& layer = rewind.layer();
    choose_path(layer, nn::ExecutionPath::fused);
    layer.zero_grad();
    Tensor<float> x = rewind.x();
    x.zero_grad();
    const auto output = layer.forward(x).output;
    sum(output).backward();
    return {max_abs_difference(output.value().data(), peer.output(), output.size()),
            max_abs_difference(x.grad().value().data(), peer.diff_input(), x.size())};
}

nlohmann::json run_case(const BenchRequest& r) {
    apply_threads(r.threads);
    const LayerConfig& config = r.layer;
    const nn::CellInfo& cell = nn::cell_info(config.cell);
    const std::size_t G = cell.gates, D = config.directions(), H = config.hidden_size, P = config.output_size();

    RewindStep rewind(r);
    // The peak reference needs the shape, not the length: capped rows keep a long sequence's run
    // from allocating gigabytes for it (and from inflating the peak RSS reported).
    SgemmStep sgemm(std::min<std::size_t>(r.steps * r.batch, 8192), G * H, config.input_size + P);
    std::unique_ptr<OnednnRnnStep> peer;
    nlohmann::json j;
    if (r.peer == "onednn") {
        if (config.layers != 1) {
            j["peer_note"] = "the oneDNN peer runs one layer only (its stacked layers need I == H); skipped";
        } else if (!config.bias || config.proj_size > 0) {
            j["peer_note"] = "the oneDNN peer runs the cells with biases and without projections only; skipped";
        } else {
            peer = std::make_unique<OnednnRnnStep>(rewind.layer(), r.steps, r.batch);
            peer->set_input(rewind.x().value().data());
            const auto [output_diff, dx_diff] = compare_with_peer(rewind, *peer);
            j["onednn_output_max_abs_diff"] = output_diff;
            j["onednn_dx_max_abs_diff"] = dx_diff;
        }
    }

    std::vector<double> sgemm_ms, onednn_ms, onednn_primitive_ms;
    nn::PathBenchOptions options;
    options.repeats = r.repeats;
    options.warmup = r.warmup;
    options.generic = !r.skip_generic;
    options.each_round = [&](bool timed) {
        const double s = sgemm.run();
        if (timed) sgemm_ms.push_back(s);
        if (peer) {
            const auto [total, primitives] = peer->run();
            if (timed) {
                onednn_ms.push_back(total);
                onednn_primitive_ms.push_back(primitives);
            }
        }
    };
    const nn::PathBenchResult timing = nn::bench_paths(rewind.layer(), rewind.x(), options);

    j["cell"] = config.cell;
    j["seq_len"] = r.steps;
    j["batch"] = r.batch;
    j["input_size"] = config.input_size;
    j["hidden_size"] = H;
    j["layers"] = config.layers;
    j["bidirectional"] = config.bidirectional;
    j["bias"] = config.bias;
    j["proj_size"] = config.proj_size;
    j["threads"] = r.threads;
    j["repeats"] = r.repeats;
    j["gemm_backend"] = blas::float_backend();
    j["checksum"] = timing.checksum + sgemm.checksum();
    j["fused_ran"] = timing.fused_ran;
    if (!timing.fused_ran) j["path_note"] = timing.path_note;
    const double fused = timing.fused_median_ms;
    const double flops = timing.flops;
    const double sgemm_gflops = sgemm.flops() / (nn::median_of(sgemm_ms) * 1e6);
    j["fused_ms"] = fused;
    if (!r.skip_generic) {
        j["generic_ms"] = timing.generic_median_ms;
        j["generic_over_fused"] = timing.generic_over_fused;
        j["generic_gflops"] = timing.generic_gflops;
    }
    j["fused_gflops"] = timing.fused_gflops;
    j["sgemm_gflops"] = sgemm_gflops;
    j["fraction_of_sgemm_peak"] = timing.fused_gflops / sgemm_gflops;
    j["fma_peak_gflops"] = fma_peak_gflops(r.threads);
    j["fraction_of_fma_peak"] = timing.fused_gflops / j["fma_peak_gflops"].get<double>();
    nn::fused::CellLayout layout = cell.layout;
    layout.projection = config.proj_size > 0;
    j["saved_bytes_per_step"] =
        nn::fused::saved_bytes_per_step(layout, r.batch, H, sizeof(float), false, config.proj_size) * D * config.layers;
    j["recompute_segment"] = timing.recompute_segment;
    j["fused_saved_bytes"] = timing.fused_saved_bytes;
    j["fused_peak_bytes"] = timing.fused_peak_bytes;
    j["peak_rss_bytes"] = peak_rss_bytes();
    if (peer) {
        j["onednn_ms"] = nn::median_of(onednn_ms);
        j["onednn_primitives_ms"] = nn::median_of(onednn_primitive_ms);
        j["onednn_over_fused"] = nn::median_of(onednn_ms) / fused;
        j["onednn_gflops"] = flops / (nn::median_of(onednn_ms) * 1e6);
    }
    return j;
}

void print_text(const nlohmann::json& j) {
    const std::size_t proj_size = j["proj_size"].get<std::size_t>();
    fmt::print("{} T={} B={} I={} H={}{} L={}{}{} threads={} (median of {}, float32, GEMM on {})\n",
               j["cell"].get<std::string>(), j["seq_len"].get<std::size_t>(), j["batch"].get<std::size_t>(),
               j["input_size"].get<std::size_t>(), j["hidden_size"].get<std::size_t>(),
               proj_size > 0 ? fmt::format(" P={}", proj_size) : "", j["layers"].get<std::size_t>(),
               j["bidirectional"].get<bool>() ? " bidirectional" : "", j["bias"].get<bool>() ? "" : " no-bias",
               j["threads"].get<int>(), j["repeats"].get<int>(), j["gemm_backend"].get<std::string>());
    fmt::print("  fused    {:9.3f} ms  {:7.1f} GFLOP/s  {:5.1f}% of the FMA peak ({:.1f} GFLOP/s), {:5.1f}% of "
               "sgemm's ({:.1f} GFLOP/s)\n",
               j["fused_ms"].get<double>(), j["fused_gflops"].get<double>(),
               100 * j["fraction_of_fma_peak"].get<double>(), j["fma_peak_gflops"].get<double>(),
               100 * j["fraction_of_sgemm_peak"].get<double>(), j["sgemm_gflops"].get<double>());
    if (j.contains("generic_ms"))
        fmt::print("  generic  {:9.3f} ms  {:7.1f} GFLOP/s  generic/fused = {:.2f}x\n", j["generic_ms"].get<double>(),
                   j["generic_gflops"].get<double>(), j["generic_over_fused"].get<double>());
    if (j.contains("onednn_ms"))
        fmt::print("  oneDNN   {:9.3f} ms  {:7.1f} GFLOP/s  oneDNN/fused = {:.2f}x  (primitives alone {:.3f} ms; "
                   "max |difference| output {:.2g}, dx {:.2g})\n",
                   j["onednn_ms"].get<double>(), j["onednn_gflops"].get<double>(), j["onednn_over_fused"].get<double>(),
                   j["onednn_primitives_ms"].get<double>(), j["onednn_output_max_abs_diff"].get<double>(),
                   j["onednn_dx_max_abs_diff"].get<double>());
    if (j.contains("peer_note")) fmt::print("  note: {}\n", j["peer_note"].get<std::string>());
    if (j.contains("path_note")) fmt::print("  note: the fused rounds ran step(): {}\n", j["path_note"].get<std::string>());
    const auto segment = j["recompute_segment"].get<std::size_t>();
    fmt::print("  saved for backward: {} bytes per time step; measured on the fused path: {} kept from forward to "
               "backward, {} at the step's peak ({}); process peak RSS {}\n",
               j["saved_bytes_per_step"].get<std::size_t>(), j["fused_saved_bytes"].get<std::size_t>(),
               j["fused_peak_bytes"].get<std::size_t>(),
               segment ? fmt::format("recomputing segments of {} steps", segment) : std::string("every step kept"),
               j["peak_rss_bytes"].get<std::size_t>());
}

// The sizes of the README's table.
std::vector<BenchRequest> suite_of(const BenchRequest& base) {
    struct Size {
        const char* cell;
        std::size_t steps, batch, input, hidden;
    };
    const Size sizes[] = {{"lstm", 100, 32, 256, 256},    {"gru", 100, 32, 256, 256}, {"rnn_tanh", 100, 32, 256, 256},
                          {"lstm", 100, 1, 128, 128},     {"gru", 100, 1, 128, 128},  {"rnn_tanh", 100, 1, 128, 128},
                          {"lstm", 50, 64, 1024, 1024}};
    std::vector<BenchRequest> cases;
    for (const auto& size : sizes) {
        BenchRequest request = base;
        request.layer = {.cell = size.cell, .input_size = size.input, .hidden_size = size.hidden};
        request.steps = size.steps;
        request.batch = size.batch;
        cases.push_back(request);
    }
    return cases;
}

int run_bench(BenchRequest request) {
    if (!request.deepbench.kind.empty()) {
        request.deepbench.json = request.json;
        request.deepbench.threads = request.threads;
        return run_deepbench(request.deepbench);
    }
    const auto cases = request.suite ? suite_of(request) : std::vector<BenchRequest>{request};
    if (request.list) {
        for (const auto& one : cases)
            std::cout << nlohmann::json{{"cell", one.layer.cell}, {"seq_len", one.steps}, {"batch", one.batch},
                                        {"input_size", one.layer.input_size},
                                        {"hidden_size", one.layer.hidden_size}}
                             .dump()
                      << std::endl;
        return 0;
    }
    for (const auto& one : cases) {
        const nlohmann::json j = run_case(one);
        if (request.json) std::cout << j.dump() << std::endl;
        else print_text(j);
    }
    return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
    auto request = std::make_shared<BenchRequest>();
    CLI::App* command = app.add_subcommand(
        "bench", "time one training step: fused vs generic path (vs oneDNN's RNN primitives), float32");
    LayerConfig& layer = request->layer;
    add_cell_option(*command, layer.cell)->capture_default_str();
    command->add_option("--seq-len", request->steps, "time steps (T)")->capture_default_str()->check(integer_in(1, max_size));
    command->add_option("--batch", request->batch, "sequences (B)")->capture_default_str()->check(integer_in(1, max_size));
    command->add_option("--input-size", layer.input_size, "features per step (I)")
        ->capture_default_str()
        ->check(integer_in(1, max_size));
    command->add_option("--hidden-size", layer.hidden_size, "hidden units (H)")
        ->capture_default_str()
        ->check(integer_in(1, max_size));
    command->add_option("--layers", layer.layers, "stacked layers (L)")->capture_default_str()->check(integer_in(1, max_layers));
    command->add_flag("--bidirectional", layer.bidirectional, "run both directions (D = 2)");
    add_structure_options(*command, layer);
    add_threads_option(*command, request->threads);
    command->add_option("--repeats", request->repeats, "timed rounds, after the warm-up")
        ->capture_default_str()
        ->check(integer_in(1, max_rounds));
    command->add_option("--warmup", request->warmup, "untimed rounds first")
        ->capture_default_str()
        ->check(integer_in(0, max_rounds));
    command->add_option("--peer", request->peer, "also time oneDNN's fused RNN primitives, interleaved")
        ->check(CLI::IsMember({"onednn"}));
    command->add_flag("--no-generic", request->skip_generic, "skip the generic path (slow at large sizes)");
    command->add_flag("--recompute", request->recompute,
                      "recomputation: keep the states every k steps and rerun segments in backward (both paths)");
    command->add_option("--recompute-every", request->recompute_every, "k for --recompute (implies it; default: about sqrt(T))")
        ->check(integer_in(1, max_size));
    command->add_flag("--suite", request->suite,
                      "the README's sizes: LSTM/GRU/RNN at T=100,B=32,I=H=256 and T=100,B=1,I=H=128, "
                      "LSTM at T=50,B=64,I=H=1024 (the size and structure options are then ignored)");
    command->add_option("--deepbench", request->deepbench.kind,
                        "DeepBench's RNN shapes that fit this machine, rewind fused vs oneDNN, as a table in DeepBench's "
                        "columns (the size and structure options are then ignored)")
        ->check(CLI::IsMember({"training", "inference"}));
    command->add_option("--rounds", request->deepbench.rounds, "--deepbench: timed rounds per side, alternating")
        ->capture_default_str()
        ->check(integer_in(1, max_rounds));
    command->add_flag("--quick", request->deepbench.quick, "--deepbench: two small shapes, one round");
    command->add_option("--plot", request->deepbench.png, "--deepbench: draw both sides' GFLOP/s into this PNG (gnuplot)");
    command->add_flag("--json", request->json, "one JSON object per case instead of text");
    command->add_flag("--list", request->list, "print the sizes of the cases as JSON lines instead of running them");
    return {command, [request, command] {
        if (request->deepbench.kind.empty()) {
            for (const char* option : {"--rounds", "--quick", "--plot"})
                if (command->count(option) > 0) throw CommandError(fmt::format("{} needs --deepbench", option));
        } else if (request->deepbench.quick && command->count("--rounds") == 0) {
            request->deepbench.rounds = 1;
        }
        return run_bench(*request);
    }};
}

}  // namespace rw::cli
