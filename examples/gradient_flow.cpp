// Vanishing and exploding gradients, measured with nn::gradient_flow. A tanh RNN's recurrent
// weight is rescaled so its largest singular value is below, at or above 1; the loss looks only
// at the last step, and ||dL/dh_t|| is recorded as the gradient travels back in time.
// Backpropagation multiplies by W_hh^T diag(1 - h^2) once per step (tanh' <= 1), so the norm
// shrinks or grows roughly geometrically. An LSTM, whose cell state is updated additively
// (c_t = f c_(t-1) + i g), is traced too, with and without a forget-gate bias.
// tests/test_flow.cpp asserts these outcomes on the same library function.
//
//   build-dir/bin/gradient_flow [--steps T] [--hidden H] [--scales 0.5,1,1.5] [--input-scale S]
//                               [--forget-biases 0,3] [--max-norm N] [--csv FILE] [--plot FILE.png]

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/analysis/curves.hpp>
#include <rewind/nn/analysis/gradient_flow.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Trace {
    std::string label;
    FlowReport report;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"vanishing and exploding gradients in a tanh RNN, and an LSTM (nn::gradient_flow)"};
    examples::CommonOptions common;
    std::size_t steps = 60, hidden = 32, input_size = 4, batch = 8, every = 0;
    std::vector<double> scales{0.5, 1.0, 1.5};
    std::vector<double> forget_biases{0.0, 3.0};
    std::string init = "orthogonal", csv, png;
    double max_norm = 1.0, input_scale = 1.0;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "sequence length T")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--scales", scales, "largest singular values of W_hh to try")->delimiter(',')->capture_default_str();
    app.add_option("--init", init, "W_hh before rescaling: orthogonal (all singular values equal) or "
                                   "uniform (PyTorch's default)")
        ->check(CLI::IsMember({"orthogonal", "uniform"}))
        ->capture_default_str();
    app.add_option("--input-scale", input_scale, "inputs from U(-s, s); small inputs keep tanh' near 1")
        ->capture_default_str();
    app.add_option("--forget-biases", forget_biases, "one LSTM per value added to its forget-gate bias")
        ->delimiter(',')
        ->capture_default_str();
    app.add_option("--max-norm", max_norm, "clip_grad_norm threshold")->capture_default_str();
    app.add_option("--every", every, "print every this many steps (default T/12)");
    app.add_option("--csv", csv, "write ||dL/dh_t|| of every run to this CSV file");
    app.add_option("--plot", png, "draw ||dL/dh_t|| against t (log scale) into this PNG with gnuplot");
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    if (every == 0) every = std::max<std::size_t>(1, steps / 12);

    Generator generator(common.seed);
    const Tensor<double> x(examples::uniform_array<double>({steps, batch, input_size}, generator, input_scale));
    const FlowOptions options{.seed = common.seed, .singular_value_steps = 0, .max_norm = max_norm};
    const CellInit cell_init{.orthogonal_recurrent = init == "orthogonal"};

    fmt::print("L = <v, h_T> after T = {} steps, hidden {}, batch {}, inputs U(-{:g}, {:g}); W_hh init {}, then rescaled\n\n",
               steps, hidden, batch, input_scale, input_scale, init);
    std::vector<Trace> traces;
    for (double scale : scales) {
        auto rnn = make_rnn<double>({.input_size = input_size, .hidden_size = hidden, .seed = common.seed, .init = cell_init});
        xt::xarray<double>& w = rnn->parameter("weight_hh_l0").mutable_value();
        const double before = largest_singular_value(w);
        w *= scale / before;
        fmt::print("tanh RNN: sigma_max(W_hh) {:.4f} -> {:.4f}\n", before, largest_singular_value(w));
        traces.push_back({fmt::format("RNN sigma={:g}", scale), gradient_flow(*rnn, x, options)});
    }
    // The LSTM's gradient travels back through c_t = f * c_(t-1) + ...: a product of forget
    // gates, not of weight matrices; a larger forget bias keeps f (and the gradient) near 1.
    for (double forget_bias : forget_biases) {
        auto lstm = make_lstm<double>({.input_size = input_size, .hidden_size = hidden, .seed = common.seed,
                                       .init = {.forget_bias = forget_bias}});
        traces.push_back({fmt::format("LSTM fbias={:g}", forget_bias), gradient_flow(*lstm, x, options)});
    }

    fmt::print("\n||dL/dh_t||, from the last step back to the first:\n{:>5}", "t");
    for (const auto& trace : traces) fmt::print(" {:>15}", trace.label);
    fmt::print("\n");
    for (std::size_t back = 0; back < steps; back += every) {
        const std::size_t t = steps - 1 - back;
        fmt::print("{:>5}", t);
        for (const auto& trace : traces) fmt::print(" {:>15.3e}", trace.report.top().grad_norm[t]);
        fmt::print("\n");
    }
    if ((steps - 1) % every != 0) {
        fmt::print("{:>5}", 0);
        for (const auto& trace : traces) fmt::print(" {:>15.3e}", trace.report.top().grad_norm[0]);
        fmt::print("\n");
    }
    fmt::print("\nper-step decay factor ||dL/dh_(t-1)|| / ||dL/dh_t|| (least-squares fit):\n{:>5}", "");
    for (const auto& trace : traces) fmt::print(" {:>15.4f}", trace.report.decay_per_step);
    fmt::print("\n\nclip_grad_norm(parameters, {:g}): the parameters' gradient norm before and after\n", max_norm);
    for (const auto& trace : traces)
        fmt::print("  {:<15} before {:11.4e}   after {:11.4e}\n", trace.label, trace.report.parameter_grad_norm,
                   trace.report.clipped_grad_norm);

    if (!png.empty() && csv.empty()) csv = png.substr(0, png.rfind('.')) + ".csv";
    if (csv.empty()) return EXIT_SUCCESS;
    Curve curve{{"t"}, {}};
    for (const auto& trace : traces) curve.columns.push_back(trace.label);
    for (std::size_t t = 0; t < steps; ++t) {
        std::vector<double> row{double(t)};
        for (const auto& trace : traces) row.push_back(trace.report.top().grad_norm[t]);
        curve.add(std::move(row));
    }
    write_csv(csv, curve);
    fmt::print("\n||dL/dh_t|| written to {}\n", csv);
    if (png.empty()) return EXIT_SUCCESS;
    plot_png(png, csv, curve.columns.size(),
             {.title = "gradient norm reaching each step (loss at the last step)", .x_label = "time step t",
              .y_label = "||dL/dh_t||", .log_y = true});
    fmt::print("plot written to {}\n", png);
    return EXIT_SUCCESS;
}
