// bench_fused_tangent: forward mode and Hessian-vector products through a fused LSTM layer (its
// tangent sweeps, nn/src/fused/tangent.cpp) against the fused first-order step, the fused forward
// and the same products through the generic layer, in alternating rounds; medians and their
// ratios, one thread by default (issue 20's targets: HVP <= 3x the fused step and >= 2x faster
// than the generic HVP; JVP <= 1.5x a fused forward). build/bin/bench_fused_tangent --help.
//
// Everything goes through the public API a user calls: rw::hvp_leaves and tangents set on the
// layer's parameters, rw::jvp, rw::grad with create_graph.

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

namespace {

using namespace rw;
using namespace rw::nn;

std::string cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown CPU";
}

Tensor<float> random(const Shape& shape, Generator& g, double scale = 1.0) {
    xt::xarray<float> value = xt::xarray<float>::from_shape(shape);
    for (auto& v : value) v = float(g.uniform(-scale, scale));
    return Tensor<float>(std::move(value));
}

double milliseconds(const std::function<void()>& work) {
    const auto start = std::chrono::steady_clock::now();
    work();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t steps = 100, batch = 32, input = 256, hidden = 256, rounds = 7;
    int threads = 1;
    bool skip_generic = false;
    CLI::App app{"forward mode and HVP through a fused LSTM layer against the generic one"};
    app.add_option("--steps", steps)->check(CLI::PositiveNumber);
    app.add_option("--batch", batch)->check(CLI::PositiveNumber);
    app.add_option("--input", input)->check(CLI::PositiveNumber);
    app.add_option("--hidden", hidden)->check(CLI::PositiveNumber);
    app.add_option("--rounds", rounds, "alternating rounds; medians are reported")->check(CLI::PositiveNumber);
    app.add_option("--threads", threads, "BLAS threads")->check(CLI::PositiveNumber);
    app.add_flag("--skip-generic", skip_generic, "leave out the generic layer's products (slow)");
    CLI11_PARSE(app, argc, argv);
    blas::set_num_threads(threads);

    Generator g(1);
    const CellFactory<float> factory = cell_factory<float>("lstm");
    Recurrent<float> fused_layer(factory, {.input_size = input, .hidden_size = hidden, .seed = 3});
    Recurrent<float> generic_layer(factory, {.input_size = input, .hidden_size = hidden, .path = ExecutionPath::generic,
                                             .seed = 3});
    const Tensor<float> x = random({steps, batch, input}, g);
    const Tensor<float> dy = random({steps, batch, hidden}, g);
    const Tensor<float> x_direction = random(x.shape(), g);
    // One direction in weight space, the same for both layers (same seed, same parameter order).
    const std::vector<Tensor<float>> fused_params = fused_layer.parameters(), generic_params = generic_layer.parameters();
    std::vector<Tensor<float>> direction;
    for (const auto& p : fused_params) direction.push_back(random(p.shape(), g));

    // The loss <dy, y> whose Hessian the products take.
    auto loss_of = [&](Recurrent<float>& layer) {
        return [&layer, &x, &dy] { return sum(mul(layer.forward(x).output, dy)); };
    };
    auto step = [&] { rw::grad<float>({loss_of(fused_layer)()}, fused_params); };
    auto forward = [&] {
        NoGradGuard no_grad;
        fused_layer.forward(x);
    };
    auto hvp = [&](Recurrent<float>& layer, const std::vector<Tensor<float>>& ps) {
        return [&layer, &ps, &direction, &loss_of] { rw::hvp_leaves<float>(loss_of(layer), ps, direction); };
    };
    // Reverse-over-reverse: grad with create_graph, then the gradient of <grad, v>.
    auto double_backward = [&](Recurrent<float>& layer, const std::vector<Tensor<float>>& ps) {
        return [&layer, &ps, &direction, &loss_of] {
            auto grads = rw::grad<float>({loss_of(layer)()}, ps, {}, {.create_graph = true});
            Tensor<float> along;
            for (std::size_t i = 0; i < grads.size(); ++i) {
                const Tensor<float> term = sum(mul(grads[i], direction[i]));
                along = along.defined() ? add(along, term) : term;
            }
            rw::grad<float>({along}, ps);
        };
    };
    // JVP along the weights: tangents on the parameters, one forward (nothing recorded).
    auto jvp_weights = [&] {
        NoGradGuard no_grad;
        for (std::size_t i = 0; i < fused_params.size(); ++i) Tensor<float>(fused_params[i]).set_tangent(direction[i]);
        Tensor<float> y = fused_layer.forward(x).output;
        for (auto p : fused_params) p.clear_tangent();
        if (!y.has_tangent()) throw std::runtime_error("no tangent reached the output");
    };
    auto jvp_x = [&] {
        NoGradGuard no_grad;
        rw::jvp<float>([&](const std::vector<Tensor<float>>& in) { return std::vector{fused_layer.forward(in[0]).output}; },
                       {x}, {x_direction});
    };

    std::vector<double> t_step, t_forward, t_hvp, t_jvp, t_jvp_x, t_double, t_generic_hvp, t_generic_double;
    step();  // warm-up: packing, allocations
    hvp(fused_layer, fused_params)();
    for (std::size_t r = 0; r < rounds; ++r) {
        t_step.push_back(milliseconds(step));
        t_hvp.push_back(milliseconds(hvp(fused_layer, fused_params)));
        t_forward.push_back(milliseconds(forward));
        t_jvp.push_back(milliseconds(jvp_weights));
        t_jvp_x.push_back(milliseconds(jvp_x));
        t_double.push_back(milliseconds(double_backward(fused_layer, fused_params)));
        if (skip_generic) continue;
        t_generic_hvp.push_back(milliseconds(hvp(generic_layer, generic_params)));
        t_generic_double.push_back(milliseconds(double_backward(generic_layer, generic_params)));
    }
    const double s = median(t_step), f = median(t_forward), h = median(t_hvp), d = median(t_double);
    fmt::print("CPU: {}; BLAS threads {}; float32; LSTM T={} B={} I={} H={}; {} alternating rounds, medians\n",
               cpu_name(), threads, steps, batch, input, hidden, rounds);
    fmt::print("fused first-order step (forward + weight gradients): {:8.2f} ms\n", s);
    fmt::print("fused forward (no_grad):                             {:8.2f} ms\n", f);
    fmt::print("fused HVP (rw::hvp_leaves, forward-over-reverse):    {:8.2f} ms = {:.2f}x the fused step (target <= 3)\n",
               h, h / s);
    fmt::print("fused double backward (reverse-over-reverse):        {:8.2f} ms = {:.2f}x the fused step\n", d, d / s);
    fmt::print("fused JVP along the weights (no_grad):               {:8.2f} ms = {:.2f}x the fused forward (target <= 1.5)\n",
               median(t_jvp), median(t_jvp) / f);
    fmt::print("fused JVP along x (rw::jvp, no_grad):                {:8.2f} ms = {:.2f}x the fused forward\n",
               median(t_jvp_x), median(t_jvp_x) / f);
    if (!skip_generic) {
        const double gh = median(t_generic_hvp), gd = median(t_generic_double);
        fmt::print("generic HVP (rw::hvp_leaves):                        {:8.2f} ms = {:.2f}x the fused HVP (target >= 2)\n",
                   gh, gh / h);
        fmt::print("generic double backward:                             {:8.2f} ms = {:.2f}x the fused double backward\n",
                   gd, gd / d);
    }
    return 0;
}
