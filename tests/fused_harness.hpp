#pragma once
// The fused-vs-generic harness shared by test_fused*.cpp: a random or hand-written layer
// configuration (Config), one forward and backward of it (run), the relative comparison of two
// runs' outputs, final states and gradients (relative_error, expect_same_results), and a layer
// run fused and generic with every difference reported (compare_paths).

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "indrnn_cell.hpp"   // examples/: user cells with hand-written fused rules: per-unit recurrent
#include "ln_lstm_cell.hpp"  // weights and no recurrent GEMM; layer norm over the row inside the
#include "mgu_cell.hpp"      // rules; two dependent GEMM stages
#include "test_helpers.hpp"

namespace rw::fused_harness {

using namespace rw::nn;
using testing::random_tensor;

// Every cell of the table of cells, and the examples' user cells with fused rules.
inline const std::vector<std::string> cells = [] {
    auto names = cell_names();
    names.push_back("mgu");
    names.push_back("indrnn");
    names.push_back("ln_lstm");
    return names;
}();

template <class T>
CellFactory<T> factory_of(const std::string& cell, const CellInit& init = {}, const CellOptions& options = {}) {
    if (cell == "mgu") return examples::mgu_factory<T>();
    if (cell == "indrnn") return examples::indrnn_factory<T>();
    if (cell == "ln_lstm") return examples::ln_lstm_factory<T>();
    return cell_factory<T>(cell, init, options);
}

// PyTorch's bias option exists for the built-in cells, not for the examples' cells.
inline bool has_bias_option(const std::string& cell) { return cell != "mgu" && cell != "indrnn" && cell != "ln_lstm"; }

// The table's entry of a built-in cell; null for the examples' cells.
inline const CellInfo* cell_info_or_null(const std::string& cell) { return has_bias_option(cell) ? &cell_info(cell) : nullptr; }

struct Config {
    std::string cell;
    std::size_t layers = 1;
    bool bidirectional = false;
    std::size_t steps = 1, batch = 1, input = 1, hidden = 1;
    std::vector<std::int64_t> lengths;  // empty: full length
    bool given_state = false;
    InitialState initial = InitialState::zeros;
    bool batch_first = false;
    // Which results the loss uses: output, h_n, c_n (at least one).
    bool use_output = true, use_h = true, use_c = true;
    bool x_requires_grad = true;
    bool bias = true;
    std::size_t proj_size = 0;  // LSTM only: h projected to this width by the driver's projection GEMM

    std::string to_string() const {
        return fmt::format("{}{} L={} {} T={} B={} I={} H={}{} lengths={} state={} {}{} loss:{}{}{}", cell,
                           bias ? "" : " no-bias", layers,
                           bidirectional ? "bi" : "uni", steps, batch, input, hidden,
                           proj_size > 0 ? fmt::format(" P={}", proj_size) : "",
                           lengths.empty() ? std::string("none") : fmt::format("{}", fmt::join(lengths, ",")),
                           given_state ? "given" : (initial == InitialState::learned ? "learned" : "zeros"),
                           batch_first ? "batch_first " : "", x_requires_grad ? "" : "x-no-grad ",
                           use_output ? "out " : "", use_h ? "h " : "", use_c ? "c" : "");
    }
};

inline Config random_config(Generator& g, std::size_t max_steps = 50) {
    auto pick = [&](std::size_t low, std::size_t high) {  // inclusive
        return low + static_cast<std::size_t>(g.uniform(0, 1) * double(high - low + 1)) % (high - low + 1);
    };
    Config c;
    c.cell = cells[pick(0, cells.size() - 1)];
    c.layers = pick(1, 3);
    c.bidirectional = pick(0, 1) == 1;
    c.steps = pick(1, max_steps);
    c.batch = pick(1, 9);
    // Odd sizes around the SIMD widths (8 doubles, 16 floats) so tails are exercised.
    static const std::size_t sizes[] = {1, 2, 3, 5, 7, 9, 13, 17, 19, 23, 31, 33};
    c.input = sizes[pick(0, 11)];
    c.hidden = sizes[pick(0, 11)];
    // Layer norm over 2 or 3 units (the LN-LSTM's cell state) is ill-conditioned: two close values
    // make 1 / std large, and it multiplies the two paths' round-off differences past the
    // tolerances. One unit is exact (it normalises to 0) and stays.
    if (c.cell == "ln_lstm" && (c.hidden == 2 || c.hidden == 3)) c.hidden = 5;
    if (pick(0, 1) == 1) {
        for (std::size_t b = 0; b < c.batch; ++b) c.lengths.push_back(std::int64_t(pick(1, c.steps)));
        if (pick(0, 1) == 1) c.lengths[pick(0, c.batch - 1)] = std::int64_t(c.steps);  // often one full row
    }
    const std::size_t state_mode = pick(0, 3);
    c.given_state = state_mode >= 2;
    c.initial = state_mode == 1 ? InitialState::learned : InitialState::zeros;
    c.batch_first = pick(0, 5) == 0;
    c.x_requires_grad = pick(0, 5) != 0;
    const std::size_t loss = pick(0, 4);
    c.use_output = loss != 1;
    c.use_h = loss != 2;
    c.use_c = loss != 3;
    if (loss == 4) c.use_h = c.use_c = false;
    c.bias = pick(0, 3) != 0 || !has_bias_option(c.cell);
    if (c.cell == "lstm" && c.hidden > 1 && pick(0, 2) == 0) c.proj_size = pick(1, c.hidden - 1);
    return c;
}

// A random configuration of `cell` small enough for the generic path's products beyond first
// order to be quick (test_fused_second_order.cpp, test_fused_forward_mode.cpp).
inline Config small_random_config(const std::string& cell, Generator& g) {
    Config c = random_config(g, 6);
    c.cell = cell;
    c.layers = std::min<std::size_t>(c.layers, 2);
    c.batch = std::min<std::size_t>(c.batch, 4);
    if (!c.lengths.empty()) c.lengths.resize(c.batch);
    c.input = std::min<std::size_t>(c.input, 9);
    c.hidden = std::min<std::size_t>(c.hidden, 9);
    c.bias = c.bias || !has_bias_option(cell);
    c.proj_size = cell == "lstm" && c.hidden > 1 && g.uniform(0, 1) < 0.3 ? 1 + c.hidden / 2 : 0;
    return c;
}

template <class T>
struct RunResult {
    std::vector<std::pair<std::string, xt::xarray<T>>> values;  // outputs, states, then gradients
};

// A configuration's forward arguments, drawn from `g`: the input, the given initial states.
template <class T>
struct LayerInputs {
    Tensor<T> x;
    std::vector<Tensor<T>> initial;
    std::optional<std::vector<std::int64_t>> lengths;
};

template <class T>
LayerInputs<T> draw_inputs(const Recurrent<T>& layer, const Config& c, Generator& g) {
    const std::size_t directions = c.bidirectional ? 2 : 1;
    Shape input_shape = c.batch_first ? Shape{c.batch, c.steps, c.input} : Shape{c.steps, c.batch, c.input};
    LayerInputs<T> in{random_tensor<T>(input_shape, g, 1.0, c.x_requires_grad), {}, std::nullopt};
    if (c.given_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s)
            in.initial.push_back(random_tensor<T>({c.layers * directions, c.batch, layer.state_size(s)}, g, 0.8, true));
    if (!c.lengths.empty()) in.lengths = c.lengths;
    return in;
}

// One forward and backward of `layer` on its current path; the loss is a random weighting of
// the chosen results (fixed by `seed`).
template <class T>
RunResult<T> run(Recurrent<T>& layer, const Config& c, std::uint64_t seed) {
    Generator g(seed);
    const auto [x, initial, lengths] = draw_inputs(layer, c, g);

    for (auto& p : layer.parameters()) p.zero_grad();
    auto result = layer.forward(x, initial, lengths);

    std::vector<Tensor<T>> roots, seeds;
    auto add_root = [&](const Tensor<T>& root) {
        roots.push_back(root);
        seeds.push_back(random_tensor<T>(root.shape(), g, 1.0));
    };
    if (c.use_output) add_root(result.output);
    if (c.use_h) add_root(result.h_n());
    if (c.use_c && result.state.size() > 1) add_root(result.c_n());
    if (roots.empty()) add_root(result.output);
    backward(roots, seeds);

    RunResult<T> r;
    r.values.emplace_back("output", result.output.value());
    for (std::size_t s = 0; s < result.state.size(); ++s)
        r.values.emplace_back(layer.state_names()[s] + "_n", result.state[s].value());
    auto grad_of = [](const Tensor<T>& t) -> xt::xarray<T> {
        return t.grad().defined() ? t.grad().value() : xt::xarray<T>(xt::zeros<T>(t.shape()));
    };
    if (c.x_requires_grad) r.values.emplace_back("dx", grad_of(x));
    for (std::size_t s = 0; s < initial.size(); ++s)
        r.values.emplace_back("d" + layer.state_names()[s] + "0", grad_of(initial[s]));
    for (auto& [name, p] : layer.named_parameters()) r.values.emplace_back("d" + name, grad_of(p));
    return r;
}

// max |a - b| relative to the largest |b| of the tensor (element-wise relative errors are
// meaningless where cancellation leaves values near zero).
template <class T>
double relative_error(const xt::xarray<T>& a, const xt::xarray<T>& b) {
    if (a.shape() != b.shape()) return INFINITY;
    double difference = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double x = a.data()[i], y = b.data()[i];
        if (std::isnan(x) != std::isnan(y)) return INFINITY;
        difference = std::max(difference, std::abs(x - y));
        scale = std::max(scale, std::abs(y));
    }
    return scale == 0 ? difference : difference / scale;
}

// Every output and gradient of `got` within `tolerance` (relative) of `expected`, each failure
// named with `what` (the configuration, the variant).
template <class T>
void expect_same_results(const RunResult<T>& got, const RunResult<T>& expected, double tolerance, const std::string& what) {
    BOOST_REQUIRE_EQUAL(got.values.size(), expected.values.size());
    for (std::size_t i = 0; i < expected.values.size(); ++i) {
        const double error = relative_error(got.values[i].second, expected.values[i].second);
        BOOST_CHECK_MESSAGE(error <= tolerance, fmt::format("{}: {} differs by {:.3g} (relative)", what,
                                                            expected.values[i].first, error));
    }
}

template <class T>
std::shared_ptr<Recurrent<T>> make_layer(const Config& c, ExecutionPath path, std::uint64_t seed, double dropout = 0) {
    RecurrentOptions options{.input_size = c.input, .hidden_size = c.hidden, .num_layers = c.layers,
                             .bidirectional = c.bidirectional, .dropout = dropout, .batch_first = c.batch_first,
                             .initial_state = c.initial, .path = path, .seed = seed, .bias = c.bias,
                             .proj_size = c.proj_size};
    auto layer = std::make_shared<Recurrent<T>>(factory_of<T>(c.cell, {}, options.cell_options()), options);
    if (c.cell == "ln_lstm") {
        // Away from LayerNorm's initial gains 1 and biases 0, where a rule that forgot a gain or a
        // bias would still agree.
        Generator g(seed + 98);
        for (auto& [name, p] : layer->named_parameters())
            if (name.find("layernorm") != std::string::npos)
                for (auto& v : p.mutable_value())
                    v = static_cast<T>(name.find("weight") != std::string::npos ? g.uniform(0.5, 1.5) : g.uniform(-0.5, 0.5));
    }
    if (c.initial == InitialState::learned) {
        // Non-zero learned states, so their gradients are tested on a non-trivial point.
        Generator g(seed + 99);
        for (auto& [name, p] : layer->named_parameters())
            if (name.rfind("initial_", 0) == 0)
                for (auto& v : p.mutable_value()) v = static_cast<T>(g.uniform(-0.5, 0.5));
    }
    return layer;
}

// Fused against generic on the same layer; returns the worst relative error and reports
// failures with the configuration.
template <class T>
double compare_paths(const Config& c, std::uint64_t seed, double tolerance) {
    auto layer = make_layer<T>(c, ExecutionPath::fused, seed);
    RunResult<T> fused = run<T>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(layer->uses_fused(), c.to_string() << ": " << layer->path_note());
    layer->set_path(ExecutionPath::generic);
    RunResult<T> generic = run<T>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(!layer->uses_fused());
    double worst = 0;
    BOOST_REQUIRE_EQUAL(fused.values.size(), generic.values.size());
    std::optional<RunResult<double>> exact;  // the float64 generic result, computed when needed
    for (std::size_t i = 0; i < fused.values.size(); ++i) {
        double error = relative_error(fused.values[i].second, generic.values[i].second);
        std::string note;
        if (error > tolerance && std::is_same_v<T, float>) {
            // A sum over T*B terms with cancellation (a 1x1 weight gradient, say) can differ by
            // more than 1e-5 relative between two float32 summation orders. Then the fused
            // result must be as close to the float64 result as the generic one is.
            if (!exact) {
                auto reference = make_layer<double>(c, ExecutionPath::generic, seed);
                exact = run<double>(*reference, c, seed + 1);
            }
            const xt::xarray<double> truth = exact->values[i].second;
            const double fused_off = relative_error(xt::xarray<double>(xt::cast<double>(fused.values[i].second)), truth);
            const double generic_off = relative_error(xt::xarray<double>(xt::cast<double>(generic.values[i].second)), truth);
            note = fmt::format(" (float64 reference: fused off by {:.3g}, generic by {:.3g})", fused_off, generic_off);
            if (fused_off <= std::max(2 * generic_off, tolerance)) {
                BOOST_TEST_MESSAGE(fmt::format("float32 {} differs by {:.3g} on {}, within round-off{}",
                                               fused.values[i].first, error, c.to_string(), note));
                error = tolerance;
            }
        }
        worst = std::max(worst, error);
        BOOST_CHECK_MESSAGE(error <= tolerance, fmt::format("{}: {} differs by {:.3g} (relative) on {}{}",
                                                            sizeof(T) == 8 ? "float64" : "float32",
                                                            fused.values[i].first, error, c.to_string(), note));
    }
    return worst;
}

}  // namespace rw::fused_harness
