// The sharpness of a trained LSTM: the top eigenvalue of its loss's Hessian with respect to all
// its parameters, by power iteration on Hessian-vector products (rw::hvp_leaves, forward-over-
// reverse: one forward with tangents and one backward per product, never the Hessian itself).
// A small LSTM is trained on the adding problem in float64, then the iteration runs on the
// generic path and on the fused path from the same start, and the two must agree to round-off.
// --product double-backward computes H v the other way, as the gradient of <grad L, v> (reverse-
// over-reverse, create_graph): an independent route to the same numbers.
//
//   build-dir/bin/hessian_eigen [--steps N] [--hidden H] [--length T] [--iterations K]
//                               [--product hvp|double-backward] [--csv F] [--plot F.png] [--json]
//                               [--seed S] [--threads N]

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

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

struct Data {
    Tensor<double> x, target;
};

Data as_double(const adding::Batch& batch) {
    return {Tensor<double>(xt::xarray<double>(xt::cast<double>(batch.x.value()))),
            Tensor<double>(xt::xarray<double>(xt::cast<double>(batch.target.value())))};
}

// An LSTM and a linear read-out of its last hidden state, in float64.
struct Model : nn::Module<double> {
    Model(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        lstm = register_module("lstm", nn::make_lstm<double>({.input_size = 2, .hidden_size = hidden, .seed = seed}));
        head = register_module("head", std::make_shared<nn::Linear<double>>(hidden, 1, init));
    }
    Tensor<double> loss(const Data& data) const {
        const Tensor<double> h_n = lstm->forward(data.x).h_n();
        return mse_loss(head->forward(reshape(h_n, {h_n.size(1), h_n.size(2)})), data.target);
    }
    std::shared_ptr<nn::Recurrent<double>> lstm;
    std::shared_ptr<nn::Linear<double>> head;
};

double dot(const std::vector<Tensor<double>>& a, const std::vector<Tensor<double>>& b) {
    double total = 0;
    for (std::size_t i = 0; i < a.size(); ++i) total += xt::sum(a[i].value() * b[i].value())();
    return total;
}

std::vector<Tensor<double>> scaled(const std::vector<Tensor<double>>& a, double factor) {
    std::vector<Tensor<double>> result;
    for (const auto& t : a) result.emplace_back(xt::xarray<double>(t.value() * factor));
    return result;
}

// H v over the parameters: rw::hvp_leaves (forward-over-reverse), or the gradient of <grad L, v>.
std::vector<Tensor<double>> hessian_product(const Model& model, const Data& data, const std::vector<Tensor<double>>& parameters,
                                            const std::vector<Tensor<double>>& v, bool forward_over_reverse) {
    if (forward_over_reverse) return hvp_leaves<double>([&] { return model.loss(data); }, parameters, v).product;
    EnableGradGuard recording(true);
    const std::vector<Tensor<double>> g =
        grad<double>({model.loss(data)}, parameters, {}, {.retain_graph = true, .create_graph = true});
    Tensor<double> projected = Tensor<double>::scalar(0.0);
    for (std::size_t i = 0; i < g.size(); ++i) projected = projected + sum(g[i] * v[i]);
    std::vector<Tensor<double>> product = grad<double>({projected}, parameters);
    for (std::size_t i = 0; i < product.size(); ++i)
        if (!product[i].defined()) product[i] = Tensor<double>::zeros(parameters[i].shape());
    return product;
}

struct PowerIteration {
    std::vector<double> estimates;  // <v_k, H v_k> per iteration
    std::vector<double> residuals;  // ||H v_k - lambda_k v_k|| / |lambda_k| per iteration
    double residual = 0;            // the last one
    bool fused_ran = false;
    std::string error;              // why the path could not run, if it could not
};

// v <- H v / ||H v||, lambda = <v, H v>, until lambda changes by less than `tolerance` (relative).
PowerIteration power_iteration(Model& model, const Data& data, nn::ExecutionPath path, std::size_t iterations,
                               double tolerance, bool forward_over_reverse, std::uint64_t seed) {
    model.lstm->set_path(path);
    const std::vector<Tensor<double>> parameters = model.parameters();
    Generator generator(seed + 7);
    std::vector<Tensor<double>> v;
    for (const auto& p : parameters) v.emplace_back(examples::uniform_array<double>(p.shape(), generator));
    v = scaled(v, 1 / std::sqrt(dot(v, v)));
    PowerIteration result;
    try {
        std::vector<Tensor<double>> hv;
        for (std::size_t k = 0; k < iterations; ++k) {
            hv = hessian_product(model, data, parameters, v, forward_over_reverse);
            result.fused_ran = model.lstm->uses_fused();
            result.estimates.push_back(dot(v, hv));
            const double lambda = result.estimates.back();
            std::vector<Tensor<double>> residual;
            for (std::size_t i = 0; i < v.size(); ++i)
                residual.emplace_back(xt::xarray<double>(hv[i].value() - lambda * v[i].value()));
            result.residual = std::sqrt(dot(residual, residual)) / std::abs(lambda);
            result.residuals.push_back(result.residual);
            fmt::print("  {} path, iteration {:3}: lambda {:.10g}  residual {:.2e}\n",
                       path == nn::ExecutionPath::fused ? "fused" : "generic", k + 1, lambda, result.residual);
            if (k > 0 && std::abs(lambda - result.estimates[k - 1]) <= tolerance * std::abs(lambda)) break;
            v = scaled(hv, 1 / std::sqrt(dot(hv, hv)));
        }
    } catch (const std::exception& e) {
        result.error = e.what();
        fmt::print("  {} path: {}\n", path == nn::ExecutionPath::fused ? "fused" : "generic", result.error);
    }
    return result;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"the top Hessian eigenvalue of a trained LSTM's loss by power iteration on rw::hvp_leaves"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    std::size_t steps = 500, hidden = 8, length = 10, iterations = 100;
    double tolerance = 1e-8;
    std::string product = "hvp";
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps before the iteration")->check(CLI::Range(0, 1000000))->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--length", length, "sequence length T of the adding problem")->check(CLI::Range(4, 10000))->capture_default_str();
    app.add_option("--iterations", iterations, "most power iterations")->check(CLI::Range(2, 100000))->capture_default_str();
    app.add_option("--tolerance", tolerance, "stop when the estimate changes by less than this (relative)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--product", product, "H v by rw::hvp_leaves (forward-over-reverse) or by double backward")
        ->check(CLI::IsMember({"hvp", "double-backward"}))
        ->capture_default_str();
    examples::add_curve_options(app, curve_options, "the eigenvalue estimate per iteration");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    // ---- training (fused path, float64) ----
    Model model(hidden, common.seed);
    nn::Adam<double> adam(model.named_parameters(), nn::AdamOptions{.lr = 1e-2});
    Generator data_stream(common.seed + 2);
    const Data held_out = as_double(adding::random_batch(length, length, 256, data_stream));
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return model.loss(held_out).item();
    };
    const double mse_before = held_out_mse();
    for (std::size_t step = 1; step <= steps; ++step) {
        const Data batch = as_double(adding::random_batch(length, length, 32, data_stream));
        adam.zero_grad();
        model.loss(batch).backward();
        nn::clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
    }
    const double mse = held_out_mse();
    std::size_t count = 0;
    for (const auto& p : model.parameters()) count += p.size();
    fmt::print("LSTM (hidden {}, {} parameters) trained {} steps on the adding problem, T={}: held-out MSE {:.4f} -> {:.4f} "
               "(predicting the mean: {:.4f})\n", hidden, count, steps, length, mse_before, mse, adding::kMeanBaselineMse);

    // ---- the top eigenvalue of the held-out loss's Hessian, on each path from the same v_0 ----
    const bool forward_over_reverse = product == "hvp";
    fmt::print("power iteration on H v = {} of the held-out MSE over the parameters:\n",
               forward_over_reverse ? "rw::hvp_leaves" : "the gradient of <grad L, v>");
    const PowerIteration generic =
        power_iteration(model, held_out, nn::ExecutionPath::generic, iterations, tolerance, forward_over_reverse, common.seed);
    const PowerIteration fused =
        power_iteration(model, held_out, nn::ExecutionPath::fused, iterations, tolerance, forward_over_reverse, common.seed);

    double max_rel_difference = fused.error.empty() && fused.estimates.size() == generic.estimates.size() ? 0 : NAN;
    if (!std::isnan(max_rel_difference))
        for (std::size_t k = 0; k < generic.estimates.size(); ++k)
            max_rel_difference = std::max(max_rel_difference, std::abs(generic.estimates[k] - fused.estimates[k]) /
                                                                  std::abs(generic.estimates[k]));
    const double lambda = generic.estimates.empty() ? NAN : generic.estimates.back();
    fmt::print("top Hessian eigenvalue {:.10g} after {} iterations (residual {:.2e}); generic path{}\n", lambda,
               generic.estimates.size(), generic.residual,
               fused.error.empty() ? fmt::format(", fused path {:.10g}{} (max relative difference over the iterations {:.2e})",
                                                 fused.estimates.back(), fused.fused_ran ? "" : " (fused did NOT run)",
                                                 max_rel_difference)
                                   : fmt::format("; the fused path failed: {}", fused.error));

    examples::Curve curve{{"iteration", "lambda (generic)", "lambda (fused)", "residual (generic)", "residual (fused)"}, {}};
    for (std::size_t k = 0; k < generic.estimates.size(); ++k) {
        const bool has_fused = k < fused.estimates.size();
        curve.add({double(k + 1), generic.estimates[k], has_fused ? fused.estimates[k] : NAN, generic.residuals[k],
                   has_fused ? fused.residuals[k] : NAN});
    }
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("top Hessian eigenvalue of a trained LSTM's loss (H={}, T={}): power iteration",
                                               hidden, length),
                          .x_label = "iteration", .y_label = "lambda = <v, H v>;  ||H v - lambda v|| / lambda", .log_y = true});

    examples::print_json(json, {{"product", product},
                                {"mse", mse},
                                {"baseline_mse", adding::kMeanBaselineMse},
                                {"parameters", count},
                                {"eigenvalue", lambda},
                                {"iterations", generic.estimates.size()},
                                {"residual", generic.residual},
                                {"fused_eigenvalue", fused.error.empty() ? fused.estimates.back() : NAN},
                                {"fused_ran", fused.error.empty() && fused.fused_ran},
                                {"fused_error", fused.error},
                                {"max_rel_difference", max_rel_difference}});
    return generic.error.empty() ? EXIT_SUCCESS : EXIT_FAILURE;
}
