// A layer-normalised LSTM (ln_lstm_cell.hpp: Ba et al. 2016, the TorchScript fastrnns
// LayerNorm-LSTM) with fused rules that normalise over their row. Its rules are checked step by
// step against the tape's derivative of its own step() (nn::check_fused_cell), the fused layer
// against central differences, then it is trained on the adding problem on the fused path and
// timed: fused against the built-in fused LSTM in the same rounds (B=32), and fused against its
// own generic path (B=1).
//
//   build-dir/bin/ln_lstm [--steps N] [--hidden H] [--length T] [--bench small|target|none]
//                         [--json] [--seed S] [--threads N]
// --bench target times the README's sizes: T=100, I=H=256, B=32 against the LSTM, B=1 against generic.

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/fused/check.hpp>
#include <rewind/nn/layers/cell_table.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "adding_task.hpp"
#include "common.hpp"
#include "user_cell_demo.hpp"
#include "ln_lstm_cell.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct BenchSize {
    std::size_t steps, batch, size;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"a layer-normalised LSTM with fused rules: check_fused_cell, gradcheck, training, timings"};
    examples::CommonOptions common;
    std::size_t steps = 300, hidden = 24, length = 20, batch = 32;
    std::string bench = "small";
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--length", length, "longest sequence of the adding problem")->check(CLI::Range(4, 10000))->capture_default_str();
    app.add_option("--bench", bench, "sizes timed: small (CI), target (the README's), none")
        ->check(CLI::IsMember({"small", "target", "none"}))
        ->capture_default_str();
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    // ---- the fused rules against the tape, step by step (float64), gains and biases moved off 1 and 0 ----
    Generator check_init(common.seed);
    examples::LNLSTMCell<double> cell(3, 5, check_init);
    for (auto& [name, p] : cell.named_parameters())
        if (name.find("layernorm") != std::string::npos)
            for (auto& v : p.mutable_value()) v += check_init.uniform(-0.3, 0.3);
    const FusedCheckReport check = check_fused_cell(cell, {.steps = 6, .batch = 4, .seed = common.seed});
    fmt::print("check_fused_cell, T=6, B=4, lengths, both directions, given h0 and c0:\n{}\n", check.to_string());

    // ---- the fused layer against central differences ----
    const examples::FusedGradcheck gradcheck = examples::gradcheck_fused_layer(examples::ln_lstm_factory<double>(), common.seed);

    // ---- training on the adding problem, fused path ----
    examples::AddingModel model("ln_lstm", examples::ln_lstm_factory<float>(), hidden, common.seed);
    const examples::AddingTraining training = examples::train_adding_fused(model, steps, length, batch, common.seed);

    // ---- timings: medians over interleaved rounds ----
    nlohmann::json timings = nlohmann::json::object();
    if (bench != "none") {
        const int repeats = bench == "target" ? 10 : 3;
        const BenchSize wide = bench == "target" ? BenchSize{100, 32, 256} : BenchSize{20, 8, 32};
        const BenchSize single = bench == "target" ? BenchSize{100, 1, 256} : BenchSize{20, 1, 32};
        Generator g(4);
        // Against the built-in fused LSTM: one LSTM training step right after each LN-LSTM step, in
        // the same rounds, so load from other processes hits both alike; the ratio is per round.
        Recurrent<float> ln(examples::ln_lstm_factory<float>(), {.input_size = wide.size, .hidden_size = wide.size, .seed = 3});
        Recurrent<float> lstm(cell_factory<float>("lstm"), {.input_size = wide.size, .hidden_size = wide.size, .seed = 3});
        const Tensor<float> x(examples::uniform_array<float>({wide.steps, wide.batch, wide.size}, g));
        std::vector<double> lstm_ms;
        const PathBenchResult against = bench_paths(ln, x, {.repeats = repeats, .warmup = 2, .generic = false,
                                                            .each_round = [&](bool timed) {
            const PathBenchResult one = bench_paths(lstm, x, {.repeats = 1, .warmup = 0, .generic = false});
            if (timed) lstm_ms.push_back(one.fused_median_ms);
        }});
        std::vector<double> ratios;
        for (std::size_t r = 0; r < lstm_ms.size(); ++r) ratios.push_back(against.fused_ms[r] / lstm_ms[r]);
        const double over_lstm = median_of(ratios);
        fmt::print("T={} B={} I=H={} float32, {} thread(s), one training step: LN-LSTM fused {:.3f} ms, LSTM fused {:.3f} ms, "
                   "LN-LSTM/LSTM = {:.2f}x (median of {} paired rounds){}\n",
                   wide.steps, wide.batch, wide.size, common.threads, against.fused_median_ms, median_of(lstm_ms), over_lstm,
                   ratios.size(), against.fused_ran ? "" : " (fused did NOT run: " + against.path_note + ")");
        // Against its own generic path.
        Recurrent<float> alone(examples::ln_lstm_factory<float>(), {.input_size = single.size, .hidden_size = single.size, .seed = 3});
        const Tensor<float> x1(examples::uniform_array<float>({single.steps, single.batch, single.size}, g));
        const PathBenchResult paths = bench_paths(alone, x1, {.repeats = repeats, .warmup = 2});
        fmt::print("T={} B={} I=H={} float32, {} thread(s), one training step: LN-LSTM fused {:.3f} ms, generic {:.3f} ms, "
                   "generic/fused = {:.2f}x{}\n",
                   single.steps, single.batch, single.size, common.threads, paths.fused_median_ms, paths.generic_median_ms,
                   paths.generic_over_fused, paths.fused_ran ? "" : " (fused did NOT run: " + paths.path_note + ")");
        timings = {{"wide", {{"seq_len", wide.steps}, {"batch", wide.batch}, {"size", wide.size},
                             {"ln_lstm_fused_ms", against.fused_median_ms}, {"lstm_fused_ms", median_of(lstm_ms)},
                             {"ln_lstm_over_lstm", over_lstm}, {"fused_ran", against.fused_ran}}},
                   {"single", {{"seq_len", single.steps}, {"batch", single.batch}, {"size", single.size},
                               {"fused_ms", paths.fused_median_ms}, {"generic_ms", paths.generic_median_ms},
                               {"generic_over_fused", paths.generic_over_fused}, {"fused_ran", paths.fused_ran}}}};
    }

    examples::print_json(json, {{"check_passed", check.passed},
                                {"gradcheck_passed", gradcheck.report.passed},
                                {"gradcheck_fused", gradcheck.fused},
                                {"trained_fused", training.trained_fused},
                                {"mse", training.mse},
                                {"baseline_mse", adding::kMeanBaselineMse},
                                {"bench", timings}});
    return check.passed && gradcheck.report.passed ? EXIT_SUCCESS : EXIT_FAILURE;
}
