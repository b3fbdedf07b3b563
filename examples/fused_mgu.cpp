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
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/train/optim.hpp>

#include "adding_task.hpp"
#include "common.hpp"
#include "mgu_cell.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct Model : Module<float> {
    Model(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        mgu = register_module("mgu", std::make_shared<Recurrent<float>>(
                                         examples::mgu_factory<float>(), RecurrentOptions{.input_size = 2, .hidden_size = hidden, .seed = seed}));
        head = register_module("head", std::make_shared<Linear<float>>(hidden, 1, init));
    }
    Tensor<float> predict(const adding::Batch& a) const {
        const Tensor<float> h_n = mgu->forward(a.x, {}, a.lengths).h_n();  // [1, B, H]
        return head->forward(reshape(h_n, {h_n.size(1), h_n.size(2)}));
    }
    std::shared_ptr<Recurrent<float>> mgu;
    std::shared_ptr<Linear<float>> head;
};

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
    auto tiny = std::make_shared<Recurrent<double>>(
        examples::mgu_factory<double>(),
        RecurrentOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true, .seed = common.seed});
    Generator check_data(common.seed + 1);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    const GradcheckReport gradcheck = examples::gradcheck_layer(*tiny, 5, lengths.size(), check_data, lengths);
    const bool gradcheck_fused = tiny->uses_fused();
    fmt::print("gradcheck on the fused path ({}), 2 layers, bidirectional, lengths {{5, 2, 4}}:\n{}\n",
               gradcheck_fused ? "fused rules ran" : "NOT fused: " + tiny->path_note(), gradcheck);

    // ---- training on the adding problem, fused path ----
    Model model(hidden, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = 1e-2});
    Generator data(common.seed + 2);
    const adding::Batch held_out = adding::random_batch(length / 2, length, 256, data);
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return double(mse_loss(model.predict(held_out), held_out.target).item());
    };
    fmt::print("adding problem, lengths {}..{}, held-out MSE (predicting the mean: {:.4f}):\n", length / 2, length,
               adding::kMeanBaselineMse);
    double mse = held_out_mse();
    fmt::print("  step {:4}  MSE {:.4f}\n", 0, mse);
    bool trained_fused = true;
    for (std::size_t step = 1; step <= steps; ++step) {
        const adding::Batch a = adding::random_batch(length / 2, length, batch, data);
        adam.zero_grad();
        mse_loss(model.predict(a), a.target).backward();
        trained_fused = trained_fused && model.mgu->uses_fused();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        if (step % std::max<std::size_t>(1, steps / 5) == 0 || step == steps)
            fmt::print("  step {:4}  MSE {:.4f}\n", step, mse = held_out_mse());
    }

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
                                {"gradcheck_passed", gradcheck.passed},
                                {"gradcheck_fused", gradcheck_fused},
                                {"trained_fused", trained_fused},
                                {"mse", mse},
                                {"baseline_mse", adding::kMeanBaselineMse},
                                {"bench", timings}});
    return check.passed && gradcheck.passed ? EXIT_SUCCESS : EXIT_FAILURE;
}
