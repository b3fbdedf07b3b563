// Vanishing and exploding gradients, measured. A tanh RNN's recurrent weight is rescaled so its
// largest singular value is below, at or above 1; the loss looks only at the last step, and a
// gradient hook on every hidden state records ||dL/dh_t|| as the gradient travels back in time.
// Backpropagation multiplies by W_hh^T diag(1 - h^2) once per step, so the norm shrinks or
// grows roughly geometrically. An LSTM, whose cell state is updated additively, is traced too.
//
//   build-dir/bin/gradient_flow [--steps T] [--hidden H] [--scales 0.5,1,1.5] [--init orthogonal|uniform]
//                               [--forget-biases 0,3] [--plot FILE.png] [--seed S] [--threads N]

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xnorm.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/cells.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Trace {
    std::string label;
    std::vector<double> norms;  // ||dL/dh_t|| for t = 0..T-1
    double parameter_norm = 0, clipped_norm = 0;
};

double l2(const xt::xarray<double>& a) { return std::sqrt(double(xt::sum(a * a)())); }

// sigma_max(W)^2 is the largest eigenvalue of W^T W, which power iteration finds by repeated
// multiplication; no SVD (and no LAPACK dependency) needed.
double largest_singular_value(const xt::xarray<double>& w, Generator& generator, int iterations = 500) {
    auto times = [](const xt::xarray<double>& m, const xt::xarray<double>& x) {
        return xt::xarray<double>(xt::sum(m * x, {1}));  // broadcasting x over the rows: m x
    };
    const xt::xarray<double> wt = xt::transpose(w);
    xt::xarray<double> v = examples::uniform_array<double>({w.shape(1)}, generator);
    for (int i = 0; i < iterations; ++i) {
        v = times(wt, times(w, v));
        v /= l2(v);
    }
    return l2(times(w, v));
}

// Runs the layer on x, takes L = <v, h_T> (only the last step matters), and records the
// gradient reaching every h_t. The observer sees each step's hidden state as it is made, which
// is where a hook can be attached; clip_grad_norm then reports the parameters' gradient norm.
Trace trace(const std::string& label, Recurrent<double>& layer, const Tensor<double>& x, const Tensor<double>& v,
            double max_norm) {
    Trace result{label, std::vector<double>(x.size(0), 0.0)};
    layer.set_step_observer([&](std::size_t, std::size_t, std::size_t t, const Tensor<double>& hidden) {
        Tensor<double> h = hidden;  // a handle to the same tensor, so the hook lands on it
        h.register_hook([&result, t](const Tensor<double>& gradient) { result.norms[t] = l2(gradient.value()); });
    });
    layer.zero_grad();
    sum(layer.forward(x).h_n() * v).backward();
    result.parameter_norm = clip_grad_norm(layer.named_parameters(), max_norm);  // the norm before clipping
    double squares = 0;
    for (const auto& p : layer.parameters()) squares += xt::sum(p.grad().value() * p.grad().value())();
    result.clipped_norm = std::sqrt(squares);
    layer.set_step_observer(nullptr);
    return result;
}

void plot(const std::string& png, const std::vector<Trace>& traces) {
    const std::string dat = png.substr(0, png.rfind('.')) + ".dat";
    std::ofstream out(dat);
    out << "t";  // a header line (not a comment) so that gnuplot's columnheader finds the labels
    for (const auto& tr : traces) out << " \"" << tr.label << '"';
    out << '\n';
    for (std::size_t t = 0; t < traces.front().norms.size(); ++t) {
        out << t;
        for (const auto& tr : traces) out << ' ' << tr.norms[t];
        out << '\n';
    }
    out.close();
    fmt::print("\ndata written to {}\n", dat);
    if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
        fmt::print("gnuplot is not on PATH, so no {}; plot column 1 against the others of {} (log y)\n", png, dat);
        return;
    }
    std::string script = fmt::format(
        "set terminal pngcairo size 900,560; set output '{}'; set logscale y; set format y '10^{{%L}}';"
        "set xlabel 'time step t'; set ylabel '||dL/dh_t||'; set key outside right;"
        "set title 'gradient norm reaching each step (loss at the last step)';"
        "plot for [i=2:{}] '{}' using 1:i with lines linewidth 2 title columnheader(i)",
        png, traces.size() + 1, dat);
    if (std::system(fmt::format("gnuplot -e \"{}\"", script).c_str()) == 0) fmt::print("plot written to {}\n", png);
    else fmt::print("gnuplot failed; the data is in {}\n", dat);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"vanishing and exploding gradients in a tanh RNN, and an LSTM"};
    examples::CommonOptions common;
    std::size_t steps = 60, hidden = 32, input_size = 4, batch = 8, every = 0;
    std::vector<double> scales{0.5, 1.0, 1.5};
    std::string init = "orthogonal", png;
    double max_norm = 1.0;
    std::vector<double> forget_biases{0.0, 3.0};
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "sequence length T")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--scales", scales, "largest singular values of W_hh to try")->delimiter(',')->capture_default_str();
    app.add_option("--init", init, "W_hh before rescaling: orthogonal (all singular values equal) or "
                                   "uniform (PyTorch's default)")
        ->check(CLI::IsMember({"orthogonal", "uniform"}))
        ->capture_default_str();
    app.add_option("--every", every, "print every this many steps (default T/12)");
    app.add_option("--max-norm", max_norm, "clip_grad_norm threshold")->capture_default_str();
    app.add_option("--forget-biases", forget_biases, "one LSTM per value added to its forget-gate bias")
        ->delimiter(',')
        ->capture_default_str();
    app.add_option("--plot", png, "write FILE.dat and, when gnuplot is on PATH, draw FILE.png");
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    if (every == 0) every = std::max<std::size_t>(1, steps / 12);

    Generator generator(common.seed);
    const Tensor<double> x(examples::uniform_array<double>({steps, batch, input_size}, generator));
    const Tensor<double> v(examples::uniform_array<double>({batch, hidden}, generator));
    const CellInit cell_init{.orthogonal_recurrent = init == "orthogonal"};

    fmt::print("L = <v, h_T> after T = {} steps, hidden {}, batch {}; W_hh init {}, then rescaled\n\n", steps, hidden,
               batch, init);
    std::vector<Trace> traces;
    for (double scale : scales) {
        auto rnn = make_rnn<double>({.input_size = input_size, .hidden_size = hidden, .seed = common.seed, .init = cell_init});
        xt::xarray<double>& w = rnn->parameter("weight_hh_l0").mutable_value();
        const double before = largest_singular_value(w, generator);
        w *= scale / before;
        fmt::print("tanh RNN: sigma_max(W_hh) {:.4f} -> {:.4f}\n", before, largest_singular_value(w, generator));
        traces.push_back(trace(fmt::format("RNN sigma={:g}", scale), *rnn, x, v, max_norm));
    }
    // The LSTM's gradient travels back through c_t = f * c_(t-1) + ...: a product of forget
    // gates, not of weight matrices; a larger forget bias keeps f (and the gradient) near 1.
    for (double forget_bias : forget_biases) {
        auto lstm = make_lstm<double>({.input_size = input_size, .hidden_size = hidden, .seed = common.seed,
                                       .init = {.forget_bias = forget_bias}});
        traces.push_back(trace(fmt::format("LSTM fbias={:g}", forget_bias), *lstm, x, v, max_norm));
    }

    fmt::print("\n||dL/dh_t||, from the last step back to the first:\n{:>5}", "t");
    for (const auto& tr : traces) fmt::print(" {:>15}", tr.label);
    fmt::print("\n");
    for (std::size_t back = 0; back < steps; back += every) {
        const std::size_t t = steps - 1 - back;
        fmt::print("{:>5}", t);
        for (const auto& tr : traces) fmt::print(" {:>15.3e}", tr.norms[t]);
        fmt::print("\n");
    }
    if ((steps - 1) % every != 0) {
        fmt::print("{:>5}", 0);
        for (const auto& tr : traces) fmt::print(" {:>15.3e}", tr.norms[0]);
        fmt::print("\n");
    }
    fmt::print("\nper step (geometric mean of ||dL/dh_(t-1)|| / ||dL/dh_t||):\n{:>5}", "");
    for (const auto& tr : traces)
        fmt::print(" {:>15.4f}", std::pow(tr.norms[0] / tr.norms[steps - 1], 1.0 / double(std::max<std::size_t>(1, steps - 1))));
    fmt::print("\n\nclip_grad_norm(parameters, {}) returns the norm before clipping; after it, the norm is:\n", max_norm);
    for (const auto& tr : traces)
        fmt::print("  {:<15} before {:11.4e}   after {:11.4e}\n", tr.label, tr.parameter_norm, tr.clipped_norm);

    if (!png.empty()) plot(png, traces);
    return EXIT_SUCCESS;
}
