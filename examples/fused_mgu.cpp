// Your own cell with hand-written fused rules: the minimal gated unit (mgu_cell.hpp), whose step
// has two dependent GEMM stages. Its fused rules are checked step by step against the tape's
// derivative of its own step() (nn::check_fused_cell), the fused layer against central
// differences (gradcheck_layer), then it is trained briefly on the adding problem on the fused
// path and timed fused vs generic with nn::bench_paths.
//
//   build-dir/bin/fused_mgu [--steps N] [--hidden H] [--length T] [--bench small|target|none]
//                           [--json] [--seed S] [--threads N]
// --bench target times the sizes of the README (T=100, B=1, I=H=128 and T=100, B=32, I=H=256).

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/fused/check.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "adding_task.hpp"
#include "common.hpp"
#include "user_cell_demo.hpp"
#include "mgu_cell.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct BenchSize {
    std::size_t steps, batch, size;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"a user-written MGU cell with hand-written fused rules: check_fused_cell, gradcheck, training, fused vs generic"};
    examples::CommonOptions common;
    std::size_t steps = 300, hidden = 24, length = 20, batch = 32;
    std::string bench = "small";
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--length", length, "longest sequence of the adding problem")->check(CLI::Range(4, 10000))->capture_default_str();
    app.add_option("--bench", bench, "sizes timed fused vs generic: small (CI), target (the README's), none")
        ->check(CLI::IsMember({"small", "target", "none"}))
        ->capture_default_str();
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    // ---- the fused rules against the tape, step by step (float64) ----
    Generator check_init(common.seed);
    const examples::MGUCell<double> cell(3, 5, check_init);
    const FusedCheckReport check = check_fused_cell(cell, {.steps = 6, .batch = 4, .seed = common.seed});
    fmt::print("check_fused_cell, T=6, B=4, lengths, both directions, given h0:\n{}\n", check.to_string());

    // ---- the fused layer against central differences ----
    const examples::FusedGradcheck gradcheck = examples::gradcheck_fused_layer(examples::mgu_factory<double>(), common.seed);

    // ---- training on the adding problem, fused path ----
    examples::AddingModel model("mgu", examples::mgu_factory<float>(), hidden, common.seed);
    const examples::AddingTraining training = examples::train_adding_fused(model, steps, length, batch, common.seed);

    // ---- fused vs generic, interleaved, medians ----
    std::vector<BenchSize> sizes;
    if (bench == "small") sizes = {{30, 1, 32}, {30, 8, 64}};
    if (bench == "target") sizes = {{100, 1, 128}, {100, 32, 256}};
    nlohmann::json timings = nlohmann::json::array();
    for (const auto& size : sizes) {
        Recurrent<float> layer(examples::mgu_factory<float>(), {.input_size = size.size, .hidden_size = size.size, .seed = 3});
        Generator g(4);
        const Tensor<float> x(examples::uniform_array<float>({size.steps, size.batch, size.size}, g));
        const PathBenchResult t = bench_paths(layer, x, {.repeats = bench == "target" ? 10 : 5, .warmup = 2});
        fmt::print("MGU T={} B={} I=H={} float32, {} thread(s): fused {:.3f} ms ({:.1f} GFLOP/s), generic {:.3f} ms, "
                   "generic/fused = {:.2f}x{}\n",
                   size.steps, size.batch, size.size, common.threads, t.fused_median_ms, t.fused_gflops,
                   t.generic_median_ms, t.generic_over_fused, t.fused_ran ? "" : " (fused did NOT run: " + t.path_note + ")");
        timings.push_back({{"seq_len", size.steps}, {"batch", size.batch}, {"size", size.size},
                           {"fused_ms", t.fused_median_ms}, {"generic_ms", t.generic_median_ms},
                           {"generic_over_fused", t.generic_over_fused}, {"fused_gflops", t.fused_gflops},
                           {"fused_ran", t.fused_ran}});
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
