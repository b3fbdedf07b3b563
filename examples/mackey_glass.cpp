// Forecasting a chaotic time series, Mackey-Glass (1977):
//     dx/dt = 0.2 x(t - 17) / (1 + x(t - 17)^10) - 0.1 x(t),
// integrated with small Euler steps and sampled every `sample` time units. A GRU reads the
// series and predicts the next value at every step (many-to-many, trained on random windows).
// One-step: the GRU reads the true series up to t and predicts t + 1. Multi-step: from several
// origins in the held-out part it runs free, its own prediction fed back as the next input.
// Both against the persistence baseline (the next value = the last one seen). The forecast
// against the truth goes to CSV, and with --plot to a PNG.
//
//   build-dir/bin/mackey_glass [--steps N] [--horizon H] [--sample DT] [--hidden H]
//                              [--csv FILE] [--plot FILE.png] [--json] [--seed S] [--threads N]

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/nn.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Settings {
    std::size_t train_length = 2000, test_length = 600, window = 64, batch = 32, steps = 500, hidden = 32;
    std::size_t horizon = 30, origins = 16, warm_up = 100;
    double sample = 3.0, lr = 5e-3;
    std::uint64_t seed = 1;
};

// `count` samples, `sample` time units apart, after a transient of 500 time units is dropped.
std::vector<double> mackey_glass(std::size_t count, double sample) {
    constexpr double beta = 0.2, gamma = 0.1, n = 10, tau = 17, dt = 0.1;
    const auto lag = std::size_t(tau / dt), per_sample = std::size_t(std::lround(sample / dt));
    std::deque<double> history(lag + 1, 1.2);  // x on [t - tau, t], constant before t = 0
    std::vector<double> series;
    for (std::size_t i = 0; series.size() < count; ++i) {
        const double x = history.back(), delayed = history.front();
        history.push_back(x + dt * (beta * delayed / (1 + std::pow(delayed, n)) - gamma * x));
        history.pop_front();
        if (double(i) * dt >= 500 && i % per_sample == 0) series.push_back(history.back());
    }
    return series;
}

struct Model : Module<float> {
    explicit Model(const Settings& s) {
        Generator init(s.seed);
        gru = register_module("gru", make_gru<float>({.input_size = 1, .hidden_size = s.hidden, .seed = s.seed}));
        head = register_module("head", std::make_shared<Linear<float>>(s.hidden, 1, init));
    }
    std::shared_ptr<Recurrent<float>> gru;
    std::shared_ptr<Linear<float>> head;
};

// [T, B, 1] from series[begin_b + t] for each column b.
Tensor<float> windows(const std::vector<double>& series, const std::vector<std::size_t>& begins, std::size_t length) {
    xt::xarray<float> x = xt::zeros<float>({length, begins.size(), std::size_t(1)});
    for (std::size_t b = 0; b < begins.size(); ++b)
        for (std::size_t t = 0; t < length; ++t) x(t, b, 0) = float(series[begins[b] + t]);
    return Tensor<float>(x);
}

double mean_square(const std::vector<double>& errors) {
    double sum = 0;
    for (double e : errors) sum += e * e;
    return sum / double(errors.size());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"one-step and multi-step forecasting of the Mackey-Glass series with a GRU"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    Settings s;
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", s.steps, "training steps")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--horizon", s.horizon, "multi-step forecast length (samples)")->check(CLI::Range(1, 10000))->capture_default_str();
    app.add_option("--sample", s.sample, "time units between samples")->check(CLI::Range(0.5, 50.0))->capture_default_str();
    app.add_option("--hidden", s.hidden, "GRU hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--window", s.window, "training window length")->check(CLI::Range(2, 100000))->capture_default_str();
    app.add_option("--batch", s.batch, "windows per step")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "Adam learning rate")->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out series with the one-step and free-running forecasts");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;
    if (s.warm_up + s.horizon * s.origins > s.test_length) s.test_length = s.warm_up + s.horizon * s.origins;

    // Standardised with the training part's mean and deviation.
    std::vector<double> series = mackey_glass(s.train_length + s.test_length, s.sample);
    double mean = 0, var = 0;
    for (std::size_t i = 0; i < s.train_length; ++i) mean += series[i] / double(s.train_length);
    for (std::size_t i = 0; i < s.train_length; ++i) var += (series[i] - mean) * (series[i] - mean) / double(s.train_length);
    for (auto& x : series) x = (x - mean) / std::sqrt(var);

    Model model(s);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = s.lr});
    Generator data(s.seed + 1);
    fmt::print("Mackey-Glass (tau 17), sampled every {} time units: {} training samples, {} held out; GRU({})\n\n",
               s.sample, s.train_length, s.test_length, s.hidden);
    examples::Progress progress("step", s.steps);
    for (std::size_t step = 1; step <= s.steps; ++step) {
        std::vector<std::size_t> begins(s.batch);
        for (auto& b : begins) b = std::size_t(data.uniform(0, double(s.train_length - s.window - 1)));
        const Tensor<float> x = windows(series, begins, s.window);
        for (auto& b : begins) ++b;
        const Tensor<float> y = windows(series, begins, s.window);
        adam.zero_grad();
        const Tensor<float> loss = mse_loss(model.head->forward(model.gru->forward(x).output), y);
        loss.backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        progress.update(step, [&] { return fmt::format("training MSE {:.5f}", loss.item()); });
    }

    NoGradGuard no_grad;
    // One step ahead over the held-out part, the state warmed up on everything before it.
    const std::size_t total = series.size();
    const xt::xarray<float> one_step =
        model.head->forward(model.gru->forward(windows(series, {0}, total - 1)).output).value();  // [total-1, 1, 1]
    std::vector<double> model_errors, persistence_errors;
    for (std::size_t t = s.train_length; t + 1 < total; ++t) {
        model_errors.push_back(one_step(t, 0, 0) - series[t + 1]);
        persistence_errors.push_back(series[t] - series[t + 1]);
    }
    const double one_step_mse = mean_square(model_errors), persistence_mse = mean_square(persistence_errors);

    // Free running from `origins` points of the held-out part at once (one batch column each).
    std::vector<std::size_t> origins;  // the first forecast step of each
    for (std::size_t o = 0; o < s.origins; ++o) origins.push_back(s.train_length + s.warm_up + o * s.horizon);
    std::vector<std::size_t> warm_begins;
    for (auto o : origins) warm_begins.push_back(o - s.warm_up);
    auto result = model.gru->forward(windows(series, warm_begins, s.warm_up));
    Tensor<float> next = model.head->forward(slice(result.output, 0, s.warm_up - 1, s.warm_up));  // [1, B, 1]
    std::vector<std::vector<double>> free_running(s.origins);
    std::vector<double> free_errors, free_persistence_errors;
    for (std::size_t h = 0; h < s.horizon; ++h) {
        for (std::size_t o = 0; o < s.origins; ++o) {
            free_running[o].push_back(next.value()(0, o, 0));
            free_errors.push_back(next.value()(0, o, 0) - series[origins[o] + h]);
            free_persistence_errors.push_back(series[origins[o] - 1] - series[origins[o] + h]);
        }
        result = model.gru->forward(next, result.state);
        next = model.head->forward(result.output);
    }
    const double free_mse = mean_square(free_errors), free_persistence_mse = mean_square(free_persistence_errors);

    fmt::print("\none step ahead, held out:   MSE {:.5f}  persistence {:.5f}  ({:.1f}% of it)\n", one_step_mse,
               persistence_mse, 100 * one_step_mse / persistence_mse);
    fmt::print("{} steps free running, {} origins: MSE {:.5f}  persistence {:.5f}  ({:.1f}% of it)\n", s.horizon,
               s.origins, free_mse, free_persistence_mse, 100 * free_mse / free_persistence_mse);
    fmt::print("(the series has unit variance: predicting its mean scores 1)\n");

    examples::Curve curve{{"t", "truth", "one step ahead", "free running"}, {}};
    for (std::size_t t = s.train_length; t < total; ++t) {
        double free = NAN;
        for (std::size_t o = 0; o < s.origins; ++o)
            if (t >= origins[o] && t < origins[o] + s.horizon) free = free_running[o][t - origins[o]];
        curve.add({double(t) * s.sample, series[t], t > 0 ? double(one_step(t - 1, 0, 0)) : NAN, free});
    }
    examples::save_curve(curve_options, curve,
                         {.title = "Mackey-Glass, held out: GRU forecasts against the truth", .x_label = "time",
                          .y_label = "x (standardised)"});
    examples::print_json(json, {{"one_step_mse", one_step_mse},
                                {"one_step_persistence_mse", persistence_mse},
                                {"horizon", s.horizon},
                                {"free_running_mse", free_mse},
                                {"free_running_persistence_mse", free_persistence_mse}});
    return EXIT_SUCCESS;
}
