// A recurrent cell of your own in a few lines of ops: IndRNN (Li et al., 2018, indrnn_cell.hpp),
//     h' = relu(W_ih x + b + u * h),   u a vector: every unit sees only its own past.
// The cell writes one step, and beside it hand-written fused rules; the layer machinery
// (Recurrent<T>) supplies stacking, both directions, variable lengths and initial states. The
// rules are checked step by step against the tape (check_fused_cell), the layer against finite
// differences in float64 (on the fused path), it is trained on the adding problem, IndRNN's own
// benchmark, and timed fused vs generic (bench_paths).
//
//   build-dir/bin/custom_cell [--steps N] [--hidden H] [--max-length T] [--csv FILE] [--plot FILE.png]
//                             [--json] [--seed S] [--threads N]

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/fused/check.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/init.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "adding_task.hpp"
#include "common.hpp"
#include "indrnn_cell.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

template <class T>
std::shared_ptr<Recurrent<T>> make_indrnn(const RecurrentOptions& options) {
    // The layer calls the factory once per layer and direction, with that layer's input size.
    return std::make_shared<Recurrent<T>>(examples::indrnn_factory<T>(), options);
}

struct Model : Module<float> {
    Model(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        rnn = register_module("rnn", make_indrnn<float>({.input_size = 2, .hidden_size = hidden, .num_layers = 2,
                                                         .bidirectional = true, .seed = seed}));
        head = register_module("head", std::make_shared<Linear<float>>(2 * hidden, 1, init));
    }
    // The last layer's h_n of both directions: the forward one at each sequence's own end, the
    // reverse one after reading it back to its start.
    Tensor<float> predict(const adding::Batch& a) const {
        const Tensor<float> h_n = rnn->forward(a.x, {}, a.lengths).h_n();  // [L*D, B, H]
        const std::size_t batch = h_n.size(1), hidden = h_n.size(2);
        const Tensor<float> last = permute(slice(h_n, 0, 2, 4), {1, 0, 2});
        return head->forward(reshape(last, {batch, 2 * hidden}));
    }
    std::shared_ptr<Recurrent<float>> rnn;
    std::shared_ptr<Linear<float>> head;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"a user-written IndRNN cell: stacked, bidirectional, variable lengths, gradcheck, training"};
    examples::CommonOptions common;
    std::size_t steps = 800, hidden = 32, max_length = 30, batch = 32;
    double lr = 1e-3;
    bool json = false;
    examples::CurveOptions curve_options;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--max-length", max_length, "longest sequence (lengths vary from half of it)")
        ->check(CLI::Range(4, 10000))
        ->capture_default_str();
    app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out MSE curve");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    // ---- gradient check, float64: a mistake in step() would show up here ----
    auto tiny = make_indrnn<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                     .seed = common.seed});
    fmt::print("IndRNN layer's parameters, named by the layer:");
    for (const auto& [name, tensor] : tiny->named_parameters()) fmt::print(" {}{}", name, shape_string(tensor.shape()));
    Generator check_data(common.seed + 1);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    fmt::print("\n\ngradcheck, 2 layers, bidirectional, lengths {{5, 2, 4}}, given h0:\n");
    const GradcheckReport report = examples::gradcheck_layer(*tiny, 5, lengths.size(), check_data, lengths);
    fmt::print("{}\n", report);
    const bool gradcheck_fused = tiny->uses_fused();
    Generator check_init(common.seed);
    const FusedCheckReport rules_check = check_fused_cell(examples::IndRNNCell<double>(3, 5, check_init), {.seed = common.seed});
    fmt::print("check_fused_cell (the fused rules against the tape, step by step):\n{}\n", rules_check.to_string());

    // ---- training on the adding problem ----
    Model model(hidden, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = lr});
    // IndRNN's constraint |u| <= 1, applied by the optimizer after each update, outside the tape.
    adam.constrain("rnn.weight_hh_*", constraints::clamp<float>(-1.0, 1.0));
    Generator data(common.seed + 2);
    const adding::Batch held_out = adding::random_batch(max_length / 2, max_length, 256, data);
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return double(mse_loss(model.predict(held_out), held_out.target).item());
    };
    fmt::print("adding problem, lengths {}..{}, held-out MSE (predicting the mean: 1/6 = {:.4f}):\n", max_length / 2,
               max_length, adding::kMeanBaselineMse);
    double mse = held_out_mse();
    fmt::print("  step {:4}  MSE {:.4f}\n", 0, mse);
    examples::Curve curve{{"step", "IndRNN", "always 1"}, {{0.0, mse, adding::kMeanBaselineMse}}};
    for (std::size_t step = 1; step <= steps; ++step) {
        const adding::Batch a = adding::random_batch(max_length / 2, max_length, batch, data);
        adam.zero_grad();
        mse_loss(model.predict(a), a.target).backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        if (step % std::max<std::size_t>(1, steps / 20) == 0 || step == steps) {
            curve.add({double(step), mse = held_out_mse(), adding::kMeanBaselineMse});
            if (step % std::max<std::size_t>(1, steps / 5) == 0 || step == steps) fmt::print("  step {:4}  MSE {:.4f}\n", step, mse);
        }
    }
    examples::save_curve(curve_options, curve, {.title = "IndRNN on the adding problem: held-out MSE",
                                                .x_label = "training step", .y_label = "MSE", .log_y = true});
    // Fused vs generic on one layer, interleaved, medians.
    Recurrent<float> timed(examples::indrnn_factory<float>(), {.input_size = 64, .hidden_size = 64, .seed = 3});
    Generator timing_data(4);
    const PathBenchResult timing = bench_paths(timed, Tensor<float>(examples::uniform_array<float>({50, 8, 64}, timing_data)),
                                               {.repeats = 5});
    fmt::print("IndRNN T=50 B=8 I=H=64 float32: fused {:.3f} ms, generic {:.3f} ms, generic/fused = {:.2f}x{}\n",
               timing.fused_median_ms, timing.generic_median_ms, timing.generic_over_fused,
               timing.fused_ran ? "" : " (fused did NOT run: " + timing.path_note + ")");
    examples::print_json(json, {{"gradcheck_passed", report.passed},
                                {"gradcheck_fused", gradcheck_fused},
                                {"check_fused_passed", rules_check.passed},
                                {"fused_ran", timing.fused_ran},
                                {"generic_over_fused", timing.generic_over_fused},
                                {"mse", mse},
                                {"baseline_mse", adding::kMeanBaselineMse}});
    return report.passed && rules_check.passed ? EXIT_SUCCESS : EXIT_FAILURE;
}
