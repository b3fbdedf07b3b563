// Exploding gradients in training, and clipping. A tanh RNN whose recurrent weight has a large
// spectral radius (W_hh orthogonal times r, so every eigenvalue has modulus r) is trained with
// plain SGD on the adding problem twice, from the same initialisation on the same batches:
// once as it is, once with clip_grad_norm. Where the recurrence amplifies, dL/dh_t grows by up to
// r per step back, the gradient's norm becomes enormous, one SGD step throws the weights far
// away and the loss or the gradient stops being a finite number: the run reports the step and
// stops (no crash, no NaN spread into a result). Clipping rescales the same gradients to at
// most --max-norm, so each step stays bounded and the run trains.
//
//   build-dir/bin/exploding_clipping [--steps N] [--length T] [--radius R] [--lr LR] [--max-norm C]
//                                    [--hidden H] [--csv FILE] [--plot FILE.png] [--json] [--seed S]

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/nn.hpp>
#include <rewind/nn/analysis/gradient_flow.hpp>

#include "adding_task.hpp"
#include "common.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct Settings {
    std::size_t length = 10, steps = 3000, hidden = 32, batch = 32;
    double radius = 2.0, lr = 0.1, max_norm = 1.0;
    std::uint64_t seed = 1;
};

// A tanh RNN with W_hh rescaled to spectral radius r, and a linear read-out of h_T.
adding::Model make_model(const Settings& s) {
    auto rnn = make_rnn<float>({.input_size = 2, .hidden_size = s.hidden, .seed = s.seed,
                                .init = {.orthogonal_recurrent = true}});
    xt::xarray<float>& w = rnn->parameter("weight_hh_l0").mutable_value();
    w *= float(s.radius / largest_singular_value(xt::xarray<double>(w)));
    return adding::Model(std::move(rnn), s.seed);
}

struct Run {
    std::string label;
    std::vector<double> loss, grad_norm;  // per completed step
    std::optional<std::size_t> diverged_at;
    std::string divergence;  // what was not finite
    double held_out_mse = std::numeric_limits<double>::quiet_NaN();
};

Run train(const Settings& s, std::optional<double> max_norm) {
    Run run;
    run.label = max_norm ? fmt::format("clip_grad_norm {:g}", *max_norm) : "no clipping";
    adding::Model model = make_model(s);
    SGD<float> sgd(model.named_parameters(), SGDOptions{.lr = s.lr});
    Generator data(s.seed + 1), test_data(s.seed + 1000);  // the same batches for both runs
    const adding::Batch held_out = adding::random_batch(s.length, s.length, 512, test_data);
    examples::Progress progress(run.label, s.steps);
    for (std::size_t step = 1; step <= s.steps; ++step) {
        const adding::Batch a = adding::random_batch(s.length, s.length, s.batch, data);
        sgd.zero_grad();
        const Tensor<float> loss = mse_loss(model.predict(a), a.target);
        const double value = loss.item();
        if (!std::isfinite(value)) {
            run.diverged_at = step;
            run.divergence = fmt::format("the loss is {}", value);
            break;
        }
        loss.backward();
        // Without clipping the threshold is infinite: nothing is scaled, the norm is still measured.
        const double norm = clip_grad_norm(model.named_parameters(), max_norm.value_or(INFINITY));
        if (!std::isfinite(norm)) {
            run.diverged_at = step;
            run.divergence = fmt::format("the gradient norm is {} (loss {:.4g})", norm, value);
            break;
        }
        sgd.step();
        run.loss.push_back(value);
        run.grad_norm.push_back(norm);
        progress.update(step, [&] { return fmt::format("loss {:.4g}  gradient norm {:.3g}", value, norm); });
    }
    if (run.diverged_at) {
        fmt::print("  {}: diverged at step {}: {}; the run stops there\n", run.label, *run.diverged_at, run.divergence);
    } else {
        NoGradGuard no_grad;
        run.held_out_mse = mse_loss(model.predict(held_out), held_out.target).item();
    }
    return run;
}

double largest(const std::vector<double>& values) {
    double m = 0;
    for (double v : values) m = std::max(m, v);
    return m;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"exploding gradients: a tanh RNN with a large recurrent spectral radius, trained with and without "
                 "clip_grad_norm"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    Settings s;
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", s.steps, "SGD steps per run")->check(CLI::Range(1, 1000000))->capture_default_str();
    app.add_option("--length", s.length, "adding-problem sequence length T")->check(CLI::Range(4, 100000))->capture_default_str();
    app.add_option("--radius", s.radius, "spectral radius of W_hh at initialisation")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--lr", s.lr, "SGD learning rate")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--max-norm", s.max_norm, "clip_grad_norm threshold of the clipped run")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--hidden", s.hidden, "hidden size")->check(CLI::Range(1, 100000))->capture_default_str();
    app.add_option("--batch", s.batch, "batch size")->check(CLI::Range(1, 100000))->capture_default_str();
    examples::add_curve_options(app, curve_options, "both training-loss curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;

    fmt::print("adding problem, T = {}, tanh RNN (hidden {}) with spectral radius {:g} of W_hh, SGD lr {:g}, {} steps; "
               "always predicting 1 scores {:.4f}\n",
               s.length, s.hidden, s.radius, s.lr, s.steps, adding::kMeanBaselineMse);
    const Run plain = train(s, std::nullopt);
    const Run clipped = train(s, s.max_norm);

    nlohmann::json summary{{"steps", s.steps}, {"radius", s.radius}, {"baseline_mse", adding::kMeanBaselineMse}};
    for (const Run* run : {&plain, &clipped}) {
        const bool diverged = run->diverged_at.has_value();
        fmt::print("{:<20} {}; largest gradient norm {:.3g}", run->label,
                   diverged ? fmt::format("diverged at step {} ({})", *run->diverged_at, run->divergence)
                            : fmt::format("trained: held-out MSE {:.4f}", run->held_out_mse),
                   largest(run->grad_norm));
        fmt::print("\n");
        nlohmann::json entry{{"diverged", diverged},
                             {"steps_completed", run->loss.size()},
                             {"max_grad_norm", largest(run->grad_norm)},
                             {"first_loss", run->loss.empty() ? nlohmann::json(nullptr) : nlohmann::json(run->loss.front())},
                             {"final_loss", run->loss.empty() ? nlohmann::json(nullptr) : nlohmann::json(run->loss.back())}};
        if (diverged) entry["diverged_at"] = *run->diverged_at, entry["divergence"] = run->divergence;
        else entry["held_out_mse"] = run->held_out_mse;
        summary[run == &plain ? "unclipped" : "clipped"] = entry;
    }

    // Loss per step; a run that diverged has no values (NaN, which gnuplot skips) after it.
    examples::Curve curve{{"step", plain.label, clipped.label, "always 1"}, {}};
    for (std::size_t step = 1; step <= s.steps; ++step) {
        auto at = [step](const Run& run) { return step <= run.loss.size() ? run.loss[step - 1] : NAN; };
        curve.add({double(step), at(plain), at(clipped), adding::kMeanBaselineMse});
    }
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("exploding gradients (spectral radius {:g}): training loss", s.radius),
                          .x_label = "SGD step", .y_label = "MSE", .log_y = true});
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
