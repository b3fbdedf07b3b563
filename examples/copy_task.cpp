// The copy task (Hochreiter & Schmidhuber, 1997; in the form of Arjovsky, Shah & Bengio, 2016):
// 10 symbols from an alphabet of 8, then T - 1 blanks, a delimiter, and 10 more blanks; the
// model must output blanks until the delimiter and then the 10 symbols. A model that remembers
// nothing predicts blanks and, for the last 10 steps, a uniform guess: a cross-entropy of
// 10 ln 8 / (T + 20) per step, the memoryless baseline. Arjovsky et al. train with RMSprop
// (lr 1e-3, alpha 0.9, batch 20) and report that the LSTM, like the tanh RNN, sits at that
// baseline for long T while their unitary RNN goes below it. Here every cell of the table can be
// compared in one run; the outcome is each one's held-out loss against the baseline.
//
//   build-dir/bin/copy_task [--length 100] [--cells lstm,gru] [--steps N] [--hidden 128] [--json]

#include <cmath>
#include <ctime>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/nn.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

constexpr std::size_t kSymbols = 8, kCopied = 10, kInputs = kSymbols + 2, kClasses = kSymbols + 1;
constexpr std::int64_t kBlank = 0, kDelimiter = kSymbols + 1;

struct Settings {
    std::size_t length = 100, steps = 1000, hidden = 128, batch = 20, eval = 256, evaluations = 10;
    double lr = 1e-3, alpha = 0.9;
    std::uint64_t seed = 1;
};

struct Batch {
    Tensor<float> x;                  // [T + 20, B, 10] one-hot
    xt::xarray<std::int64_t> target;  // [T + 20, B]
};

Batch random_batch(std::size_t length, std::size_t batch, Generator& data) {
    const std::size_t steps = length + 2 * kCopied;
    xt::xarray<float> x = xt::zeros<float>({steps, batch, kInputs});
    xt::xarray<std::int64_t> target = xt::zeros<std::int64_t>({steps, batch});
    for (std::size_t b = 0; b < batch; ++b) {
        for (std::size_t t = 0; t < steps; ++t) x(t, b, kBlank) = 1;
        for (std::size_t i = 0; i < kCopied; ++i) {
            const auto symbol = 1 + std::int64_t(data.uniform(0, double(kSymbols)));
            x(i, b, kBlank) = 0, x(i, b, symbol) = 1;
            target(length + kCopied + i, b) = symbol;
        }
        const std::size_t delimiter = kCopied + length - 1;
        x(delimiter, b, kBlank) = 0, x(delimiter, b, kDelimiter) = 1;
    }
    return {Tensor<float>(std::move(x)), std::move(target)};
}

struct Model : Module<float> {
    Model(const std::string& cell, const Settings& s) {
        rnn = register_module("rnn", make_recurrent<float>(cell, {.input_size = kInputs, .hidden_size = s.hidden, .seed = s.seed}));
        head = register_module("head", std::make_shared<Linear<float>>(
                                           LinearOptions{.in_features = s.hidden, .out_features = kClasses, .seed = s.seed + 7}));
    }
    Tensor<float> loss(const Batch& b) const {
        return sequence_cross_entropy(head->forward(rnn->forward(b.x).output), b.target);
    }
    std::shared_ptr<Recurrent<float>> rnn;
    std::shared_ptr<Linear<float>> head;
};

struct Trained {
    std::vector<double> curve;  // the held-out loss after each evaluation interval (first: untrained)
    double cpu_seconds = 0;     // the process's CPU time in the training steps
};

Trained train(const std::string& cell, const Settings& s) {
    Model model(cell, s);
    RMSprop<float> rmsprop(model.named_parameters(), {.lr = s.lr, .alpha = s.alpha});
    Generator data(s.seed + 1), test_data(s.seed + 1000);
    const Batch held_out = random_batch(s.length, s.eval, test_data);
    auto held_out_loss = [&] {
        NoGradGuard no_grad;
        return double(model.loss(held_out).item());
    };
    Trained out;
    std::vector<double>& curve = out.curve;
    curve.push_back(held_out_loss());
    const std::size_t every = std::max<std::size_t>(1, s.steps / s.evaluations);
    examples::Progress progress(cell, s.steps);
    for (std::size_t step = 1; step <= s.steps; ++step) {
        const Batch batch = random_batch(s.length, s.batch, data);
        const std::clock_t cpu_start = std::clock();
        rmsprop.zero_grad();
        model.loss(batch).backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        rmsprop.step();
        out.cpu_seconds += double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        if (step % every == 0 || step == s.steps) curve.push_back(held_out_loss());
        progress.update(step, [&] { return fmt::format("held-out loss {:.4f}", curve.back()); });
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"the copy task: which cells get below the memoryless baseline 10 ln 8 / (T + 20)"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    Settings s;
    std::vector<std::string> cells{"lstm"};
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--length", s.length, "T: blanks between the symbols and the delimiter, plus one")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
    app.add_option("--steps", s.steps, "training steps per cell")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", s.hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", s.batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "RMSprop learning rate")->capture_default_str();
    app.add_option("--alpha", s.alpha, "RMSprop's smoothing constant (Arjovsky et al.'s decay 0.9)")->capture_default_str();
    app.add_option("--cells", cells, "cells to compare")->delimiter(',')->check(CLI::IsMember(cell_names()))->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out loss curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;

    const double baseline = double(kCopied) * std::log(double(kSymbols)) / double(s.length + 2 * kCopied);
    fmt::print("copy task, T = {} ({} steps per sequence), {} training steps of batch {}, hidden {}, RMSprop lr {} alpha {}; "
               "memoryless baseline {:.4f}\n\n",
               s.length, s.length + 2 * kCopied, s.steps, s.batch, s.hidden, s.lr, s.alpha, baseline);
    nlohmann::json summary{{"length", s.length}, {"steps", s.steps}, {"baseline", baseline}};
    std::vector<std::vector<double>> curves;
    for (const auto& cell : cells) {
        const Trained trained = train(cell, s);
        curves.push_back(trained.curve);
        const double final_loss = curves.back().back();
        summary["loss"][cell] = final_loss;
        summary["cpu_ms_per_step"][cell] = 1e3 * trained.cpu_seconds / double(s.steps);
        fmt::print("{:<9} held-out loss {:.4f} -> {:.4f}  ({:.2f} x the baseline{}); CPU {:.1f} ms/step\n\n", cell,
                   curves.back().front(), final_loss, final_loss / baseline, final_loss < 0.5 * baseline ? ": beats it" : "",
                   1e3 * trained.cpu_seconds / double(s.steps));
    }
    examples::Curve curve{{"step"}, {}};
    curve.columns.insert(curve.columns.end(), cells.begin(), cells.end());
    curve.columns.push_back("baseline");
    const std::size_t every = std::max<std::size_t>(1, s.steps / s.evaluations);
    for (std::size_t i = 0; i < curves.front().size(); ++i) {
        std::vector<double> row{double(std::min(i * every, s.steps))};
        for (const auto& c : curves) row.push_back(c[i]);
        row.push_back(baseline);
        curve.add(row);
    }
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("copy task, T = {}: held-out cross-entropy", s.length),
                          .x_label = "training step", .y_label = "cross-entropy", .log_y = true});
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
