// The adding problem at T = 100: a tanh RNN against an LSTM and a GRU. The answer depends on a
// value seen in the first half of the sequence, so the gradient has to survive ~50 or more steps
// of backpropagation through time. The tanh RNN's vanishes and it stays at the MSE of always
// predicting 1 (1/6); the gated cells carry it and solve the task.
//
// With --target-mse the run stops at the first evaluation below it and reports the steps taken
// and the wall time of training (the LSTM replication of Hochreiter & Schmidhuber 1997 and Le et
// al. 2015: README "Paper replications").
//
//   build-dir/bin/adding_problem [--length T] [--steps N] [--cells rnn_tanh,lstm,gru] [--hidden H]
//                                [--target-mse M] [--csv FILE] [--plot FILE.png] [--json] [--seed S] [--threads N]

#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/nn.hpp>

#include "adding_task.hpp"
#include "common.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct Settings {
    std::size_t length = 100, steps = 600, hidden = 32, batch = 32, evaluations = 20;
    double lr = 1e-2, forget_bias = 1.0, target_mse = 0;
    std::uint64_t seed = 1;
};

adding::Model make_model(const std::string& cell, const Settings& s) {
    return adding::Model(make_recurrent<float>(cell, {.input_size = 2, .hidden_size = s.hidden, .seed = s.seed,
                                                      .init = {.forget_bias = s.forget_bias}}),
                         s.seed);
}

struct Trained {
    std::vector<double> curve;  // the held-out MSE after every evaluation interval (first: untrained)
    std::size_t steps = 0;      // taken: all, or up to the first evaluation below the target
    double seconds = 0;         // of training steps, without the evaluations
    double cpu_seconds = 0;     // the process's CPU time in them
};

Trained train(const std::string& cell, const Settings& s) {
    adding::Model model = make_model(cell, s);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = s.lr});
    Generator data(s.seed + 1), test_data(s.seed + 1000);  // the same held-out set for every cell
    const adding::Batch held_out = adding::random_batch(s.length, s.length, 512, test_data);
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return double(mse_loss(model.predict(held_out), held_out.target).item());
    };
    Trained out;
    std::vector<double>& curve = out.curve;
    curve.push_back(held_out_mse());
    const std::size_t every = std::max<std::size_t>(1, s.steps / s.evaluations);
    examples::Progress progress(cell, s.steps);
    for (std::size_t step = 1; step <= s.steps; ++step) {
        const adding::Batch a = adding::random_batch(s.length, s.length, s.batch, data);
        const auto start = std::chrono::steady_clock::now();  // the step, not the data
        const std::clock_t cpu_start = std::clock();  // CPU time too: wall time on a shared machine says little
        adam.zero_grad();
        mse_loss(model.predict(a), a.target).backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        out.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        out.cpu_seconds += double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        out.steps = step;
        if (step % every == 0 || step == s.steps) curve.push_back(held_out_mse());
        progress.update(step, [&] { return fmt::format("held-out MSE {:.4f}", curve.back()); });
        if (s.target_mse > 0 && step % every == 0 && curve.back() < s.target_mse) break;
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"the adding problem: tanh RNN vs LSTM vs GRU on long-range memory"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    Settings s;
    std::vector<std::string> cells{"rnn_tanh", "lstm", "gru"};
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--length", s.length, "sequence length T (the classic settings: 100 to 1000)")
        ->check(CLI::Range(4, 100000))
        ->capture_default_str();
    app.add_option("--steps", s.steps, "training steps per cell")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", s.hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", s.batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "Adam learning rate")->capture_default_str();
    app.add_option("--target-mse", s.target_mse, "stop at the first evaluation below this held-out MSE (0: never)")
        ->capture_default_str();
    app.add_option("--evaluations", s.evaluations, "evaluations of the held-out MSE over the run")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--forget-bias", s.forget_bias, "added to the LSTM's forget-gate bias at initialisation")
        ->capture_default_str();
    app.add_option("--cells", cells, "cells to compare")
        ->delimiter(',')
        ->check(CLI::IsMember(rw::nn::cell_names()))
        ->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out MSE curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;

    fmt::print("adding problem, T = {}, {} steps of batch {}, hidden {}; held-out MSE (always predicting 1: {:.4f})\n\n",
               s.length, s.steps, s.batch, s.hidden, adding::kMeanBaselineMse);
    std::vector<std::vector<double>> curves;
    nlohmann::json summary{{"length", s.length}, {"steps", s.steps}, {"baseline_mse", adding::kMeanBaselineMse}};
    for (const auto& cell : cells) {
        const Trained trained = train(cell, s);
        curves.push_back(trained.curve);
        const double final_mse = curves.back().back();
        summary["mse"][cell] = final_mse;
        summary["steps_taken"][cell] = trained.steps;
        summary["training_seconds"][cell] = trained.seconds;
        summary["training_cpu_seconds"][cell] = trained.cpu_seconds;
        fmt::print("{:<9} held-out MSE {:.4f} -> {:.4f}  ({:.0f}% of the baseline) after {} steps, {:.1f} s of training "
                   "({:.1f} ms/step; CPU {:.1f} ms/step)\n\n",
                   cell, curves.back().front(), final_mse, 100 * final_mse / adding::kMeanBaselineMse, trained.steps,
                   trained.seconds, 1e3 * trained.seconds / double(trained.steps),
                   1e3 * trained.cpu_seconds / double(trained.steps));
    }

    examples::Curve curve{{"step"}, {}};
    curve.columns.insert(curve.columns.end(), cells.begin(), cells.end());
    curve.columns.push_back("always 1");
    const std::size_t every = std::max<std::size_t>(1, s.steps / s.evaluations);
    std::size_t longest = 0;
    for (const auto& c : curves) longest = std::max(longest, c.size());
    for (std::size_t i = 0; i < longest; ++i) {
        std::vector<double> row{double(std::min(i * every, s.steps))};
        for (const auto& c : curves) row.push_back(c[std::min(i, c.size() - 1)]);  // a run stopped at its target stays there
        row.push_back(adding::kMeanBaselineMse);
        curve.add(row);
    }
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("adding problem, T = {}: held-out MSE", s.length), .x_label = "training step",
                          .y_label = "MSE", .log_y = true});
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
