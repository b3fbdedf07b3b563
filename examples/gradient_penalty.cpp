// Double backpropagation through a recurrent layer (Drucker & LeCun 1992; the input-gradient
// penalty of WGAN-GP and Sobolev training): a GRU trained on the adding problem with
//
//     loss = MSE + lambda * P,    P = B * ||d MSE / d x||^2  (the mean over sequences of ||d loss_b / d x_b||^2)
//
// P is a gradient, so minimising it differentiates the layer's backward again: d P / d(weights)
// needs the recurrent op's double backward (create_graph). On the fused path (the default) that is
// the fused kernel's own second-order rule, not a fallback to the tape, and the example says
// which path ran. The same run with lambda = 0 shows what the penalty changes.
//
//   build-dir/bin/gradient_penalty [--steps N] [--length T] [--hidden H] [--lambda L] [--path fused|generic]
//                                  [--csv F] [--plot F.png] [--json] [--seed S] [--threads N]

#include <cstdlib>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/train/optim.hpp>

#include "adding_task.hpp"
#include "common.hpp"

using namespace rw;
namespace adding = examples::adding;

namespace {

struct Losses {
    Tensor<float> task, penalty;
};

// The task loss and the input-gradient penalty of one batch; the penalty's graph is kept
// (create_graph) so that it can be differentiated with respect to the weights.
Losses losses(const adding::Model& model, const adding::Batch& batch) {
    const Tensor<float> x(batch.x.value(), /*requires_grad=*/true);
    const Tensor<float> task = mse_loss(model.predict({x, batch.target, batch.lengths}), batch.target);
    const Tensor<float> g = grad<float>({task}, {x}, {}, {.retain_graph = true, .create_graph = true}).at(0);
    return {task, sum(g * g) * float(x.size(1))};
}

struct Evaluation {
    double mse = 0, penalty = 0;
};

Evaluation evaluate(const adding::Model& model, const adding::Batch& held_out) {
    const Losses l = losses(model, held_out);
    return {double(l.task.item()), double(l.penalty.item())};
}

struct Run {
    Evaluation start, end;
    bool fused_ran = true;  // every forward of the recurrent layer ran the fused kernel
    std::string path_note;
    std::vector<Evaluation> curve;
    // The penalty averaged over the evaluations after step 0: it follows the residual, so its
    // value at the end mostly says how well the task was learned, and its mean over the run says
    // how sensitive to its input the model was on the way.
    double mean_penalty() const {
        double total = 0;
        for (std::size_t i = 1; i < curve.size(); ++i) total += curve[i].penalty;
        return total / double(curve.size() - 1);
    }
};

Run train(double lambda, nn::ExecutionPath path, std::size_t steps, std::size_t length, std::size_t hidden,
          std::uint64_t seed, std::size_t every) {
    auto gru = nn::make_gru<float>({.input_size = 2, .hidden_size = hidden, .path = path, .seed = seed});
    adding::Model model(gru, seed);
    nn::Adam<float> adam(model.named_parameters(), nn::AdamOptions{.lr = 1e-2});
    Generator data(seed + 2);
    const adding::Batch held_out = adding::random_batch(length, length, 256, data);
    Run run;
    run.start = evaluate(model, held_out);
    run.curve.push_back(run.start);
    fmt::print("lambda {:g}, {} path: step {:4}  MSE {:.4f}  penalty {:.4f}\n", lambda,
               path == nn::ExecutionPath::fused ? "fused" : "generic", 0, run.start.mse, run.start.penalty);
    for (std::size_t step = 1; step <= steps; ++step) {
        const adding::Batch a = adding::random_batch(length, length, 32, data);
        adam.zero_grad();
        const Losses l = losses(model, a);
        run.fused_ran = run.fused_ran && gru->uses_fused();
        if (!gru->path_note().empty()) run.path_note = gru->path_note();
        (lambda == 0 ? l.task : l.task + l.penalty * float(lambda)).backward();
        nn::clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        if (step % every == 0 || step == steps) {
            run.curve.push_back(run.end = evaluate(model, held_out));
            fmt::print("lambda {:g}: step {:4}  MSE {:.4f}  penalty {:.4f}\n", lambda, step, run.end.mse, run.end.penalty);
        }
    }
    return run;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"double backpropagation: an input-gradient penalty through a GRU on the adding problem"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    std::size_t steps = 400, length = 20, hidden = 16;
    double lambda = 0.1;
    std::string path = "fused";
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->check(CLI::Range(1, 1000000))->capture_default_str();
    app.add_option("--length", length, "sequence length T of the adding problem")->check(CLI::Range(4, 10000))->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--lambda", lambda, "weight of the penalty")->check(CLI::Range(0.0, 1e6))->capture_default_str();
    app.add_option("--path", path, "the recurrent layer's execution path")
        ->check(CLI::IsMember({"fused", "generic"}))
        ->capture_default_str();
    examples::add_curve_options(app, curve_options, "held-out MSE and penalty per evaluation");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    const auto execution = path == "fused" ? nn::ExecutionPath::fused : nn::ExecutionPath::generic;
    const std::size_t every = std::max<std::size_t>(1, steps / 10);
    const Run penalised = train(lambda, execution, steps, length, hidden, common.seed, every);
    const Run plain = train(0.0, execution, steps, length, hidden, common.seed, every);

    fmt::print("held-out, T={}, {} steps, {} path{}:\n", length, steps, path,
               penalised.fused_ran || execution == nn::ExecutionPath::generic ? ""
                                                                              : " (fused did NOT run: " + penalised.path_note + ")");
    for (const auto& [l, run] : {std::pair<double, const Run&>{lambda, penalised}, {0.0, plain}})
        fmt::print("  lambda {:<4g} MSE {:.4f} -> {:.4f}  penalty {:.4f} -> {:.4f}, mean over the run {:.4f}\n", l,
                   run.start.mse, run.end.mse, run.start.penalty, run.end.penalty, run.mean_penalty());
    fmt::print("  predicting the mean: MSE {:.4f}\n", adding::kMeanBaselineMse);

    examples::Curve curve{{"step", "MSE (lambda)", "penalty (lambda)", "MSE (no penalty)", "penalty (no penalty)"}, {}};
    for (std::size_t i = 0; i < penalised.curve.size(); ++i)
        curve.add({double(std::min(i * every, steps)), penalised.curve[i].mse, penalised.curve[i].penalty,
                   plain.curve[i].mse, plain.curve[i].penalty});
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("input-gradient penalty through a GRU (adding problem, T={})", length),
                          .x_label = "step", .y_label = "held-out value", .log_y = true});

    const bool fused = execution == nn::ExecutionPath::fused;
    examples::print_json(json, {{"path", path},
                                {"fused_ran", fused && penalised.fused_ran && plain.fused_ran},
                                {"lambda", lambda},
                                {"length", length},
                                {"mse_start", penalised.start.mse},
                                {"mse", penalised.end.mse},
                                {"penalty_start", penalised.start.penalty},
                                {"penalty", penalised.end.penalty},
                                {"mean_penalty", penalised.mean_penalty()},
                                {"unpenalised_mean_penalty", plain.mean_penalty()},
                                {"unpenalised_mse", plain.end.mse},
                                {"unpenalised_penalty", plain.end.penalty},
                                {"baseline_mse", adding::kMeanBaselineMse}});
    return EXIT_SUCCESS;
}
