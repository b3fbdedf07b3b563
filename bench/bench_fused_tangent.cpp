// bench_fused_tangent: forward mode and the Hessian-vector product through the fused LSTM's tangent
// sweeps (nn/src/fused/tangent.cpp) against the fused first-order step, the fused forward and the
// generic path's HVP (double backward on the tape), in alternating rounds; medians and their
// ratios, one thread by default (issue 20's targets: HVP <= 3x the fused step and >= 2x faster
// than the generic HVP; JVP <= 1.5x a fused forward). build/bin/bench_fused_tangent --help.
//
// The sweeps are called through the driver's full-memory run (tangent_run.hpp): the same
// forward the recorded op runs, then the sweeps, without the tape around them.

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

#include "fused/tangent_run.hpp"

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
    CLI::App app{"forward mode and HVP through the fused LSTM's tangent sweeps"};
    app.add_option("--steps", steps)->check(CLI::PositiveNumber);
    app.add_option("--batch", batch)->check(CLI::PositiveNumber);
    app.add_option("--input", input)->check(CLI::PositiveNumber);
    app.add_option("--hidden", hidden)->check(CLI::PositiveNumber);
    app.add_option("--rounds", rounds, "alternating rounds; medians are reported")->check(CLI::PositiveNumber);
    app.add_option("--threads", threads, "BLAS threads")->check(CLI::PositiveNumber);
    app.add_flag("--skip-generic", skip_generic, "leave out the generic path's HVP (slow)");
    CLI11_PARSE(app, argc, argv);
    blas::set_num_threads(threads);

    Generator g(1);
    const CellFactory<float> factory = cell_factory<float>("lstm");
    Recurrent<float> fused_layer(factory, {.input_size = input, .hidden_size = hidden, .seed = 3});
    Recurrent<float> generic_layer(factory, {.input_size = input, .hidden_size = hidden, .path = ExecutionPath::generic,
                                             .seed = 3});
    const Tensor<float> x = random({steps, batch, input}, g);
    const Tensor<float> dy = random({steps, batch, hidden}, g);
    const auto& cell = fused_layer.cell(0, 0);
    const auto& rules = *cell.fused_rules();
    const std::vector<Tensor<float>> initial{Tensor<float>::zeros({batch, hidden}), Tensor<float>::zeros({batch, hidden})};
    const std::vector<Tensor<float>> op_inputs = fused::detail::tangent_op_inputs(rules, x, initial);
    // The direction: random on the four weights, zero on x and the initial states (an HVP in weight space).
    std::vector<Tensor<float>> direction(op_inputs.size());
    std::vector<bool> needed(op_inputs.size(), false);
    for (std::size_t i = 1; i + 2 < op_inputs.size(); ++i) {
        direction[i] = random(op_inputs[i].shape(), g);
        needed[i] = true;
    }
    const std::vector<Tensor<float>> params = fused_layer.parameters(), generic_params = generic_layer.parameters();
    std::vector<Tensor<float>> generic_direction;
    for (const auto& p : generic_params) generic_direction.push_back(random(p.shape(), g));

    auto fused_step = [&] {
        auto out = fused_layer.forward(x);
        rw::grad<float>({out.output}, params, {dy});
    };
    auto fused_forward = [&] { fused_layer.forward(x); };
    auto sweeps_hvp = [&] {
        fused::detail::run_tangent_sweeps<float>(rules, x, initial, {}, false, direction, {dy}, {}, true, needed);
    };
    auto sweeps_jvp = [&] { fused::detail::run_tangent_sweeps<float>(rules, x, initial, {}, false, direction, {}, {}, false); };
    // Along x only (a sensitivity of the outputs to the input): no weight tangents.
    std::vector<Tensor<float>> along_x(op_inputs.size());
    along_x[0] = random(x.shape(), g);
    auto sweeps_jvp_x = [&] { fused::detail::run_tangent_sweeps<float>(rules, x, initial, {}, false, along_x, {}, {}, false); };

    // The same HVP end to end through the fused layer: its double backward, whose second-order
    // rule runs the sweeps (replay::directional).
    auto layer_hvp = [&](Recurrent<float>& layer, const std::vector<Tensor<float>>& ps, const std::vector<Tensor<float>>& v) {
        auto out = layer.forward(x);
        auto grads = rw::grad<float>({out.output}, ps, {dy}, {.create_graph = true});
        Tensor<float> along;
        for (std::size_t i = 0; i < grads.size(); ++i) {
            const Tensor<float> term = sum(mul(grads[i], v[i]));
            along = along.defined() ? add(along, term) : term;
        }
        rw::grad<float>({along}, ps);
    };
    auto generic_hvp = [&] { layer_hvp(generic_layer, generic_params, generic_direction); };
    std::vector<Tensor<float>> fused_direction;
    for (const auto& p : params) fused_direction.push_back(random(p.shape(), g));
    auto fused_layer_hvp = [&] { layer_hvp(fused_layer, params, fused_direction); };
    // The same with the sweeps switched off: the fused op's replay differentiated twice.
    auto replay_layer_hvp = [&] {
        fused::driver::set_tangent_sweeps_enabled(false);
        layer_hvp(fused_layer, params, fused_direction);
        fused::driver::set_tangent_sweeps_enabled(true);
    };

    const auto refusal = fused::detail::run_tangent_sweeps<float>(rules, x, initial, {}, false, direction, {dy}, {}, false).refusal;
    if (!refusal.empty()) {
        fmt::print(stderr, "the sweeps do not apply: {}\n", refusal);
        return 1;
    }
    std::vector<double> t_step, t_forward, t_hvp, t_jvp, t_jvp_x, t_layer, t_replay, t_generic;
    fused_step();  // warm-up: packing, allocations
    sweeps_hvp();
    for (std::size_t r = 0; r < rounds; ++r) {
        t_step.push_back(milliseconds(fused_step));
        t_hvp.push_back(milliseconds(sweeps_hvp));
        t_forward.push_back(milliseconds(fused_forward));
        t_jvp.push_back(milliseconds(sweeps_jvp));
        t_jvp_x.push_back(milliseconds(sweeps_jvp_x));
        t_layer.push_back(milliseconds(fused_layer_hvp));
        if (!skip_generic) t_replay.push_back(milliseconds(replay_layer_hvp));
        if (!skip_generic) t_generic.push_back(milliseconds(generic_hvp));
    }
    const double step = median(t_step), forward = median(t_forward), hvp = median(t_hvp), jvp = median(t_jvp);
    fmt::print("CPU: {}; BLAS threads {}; float32; LSTM T={} B={} I={} H={}; {} alternating rounds, medians\n",
               cpu_name(), threads, steps, batch, input, hidden, rounds);
    fmt::print("fused first-order step (forward + backward): {:.2f} ms\n", step);
    fmt::print("fused forward (recorded):                    {:.2f} ms\n", forward);
    fmt::print("fused HVP (forward + tangent sweeps):        {:.2f} ms  = {:.2f}x the fused step (target <= 3)\n", hvp,
               hvp / step);
    fmt::print("fused JVP (forward + forward tangent sweep): {:.2f} ms  = {:.2f}x the fused forward (target <= 1.5)\n", jvp,
               jvp / forward);
    fmt::print("fused JVP along x only:                      {:.2f} ms  = {:.2f}x the fused forward\n", median(t_jvp_x),
               median(t_jvp_x) / forward);
    const double layer = median(t_layer);
    fmt::print("fused layer double backward (HVP):           {:.2f} ms  = {:.2f}x the fused step\n", layer, layer / step);
    if (!skip_generic) {
        const double replay = median(t_replay), generic = median(t_generic);
        fmt::print("fused layer double backward by the replay:   {:.2f} ms  = {:.2f}x the fused layer's with the sweeps\n",
                   replay, replay / layer);
        fmt::print("generic layer double backward (HVP):         {:.2f} ms  = {:.2f}x the fused HVP, {:.2f}x the fused layer's "
                   "(target >= 2)\n",
                   generic, generic / hvp, generic / layer);
    }
    return 0;
}
