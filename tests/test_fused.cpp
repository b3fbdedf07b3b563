// The built-in cells' fused rules (run by the one sequence driver) against the generic per-step
// tape: outputs, final states and every gradient, over randomized configurations, in float64 and
// float32, asserting that the fused path really ran; gradcheck on the fused path; dropout between
// layers; the double-backward error; which path a layer reports.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "indrnn_cell.hpp"  // examples/: user cells with hand-written fused rules: per-unit recurrent
#include "mgu_cell.hpp"     // weights and no recurrent GEMM; two dependent GEMM stages
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using testing::random_tensor;

namespace {

// Every cell of the table of cells, and the examples' user cells with fused rules.
const std::vector<std::string> cells = [] {
    auto names = cell_names();
    names.push_back("mgu");
    names.push_back("indrnn");
    return names;
}();

template <class T>
CellFactory<T> factory_of(const std::string& cell, const CellInit& init = {}, const CellOptions& options = {}) {
    if (cell == "mgu") return examples::mgu_factory<T>();
    if (cell == "indrnn") return examples::indrnn_factory<T>();
    return cell_factory<T>(cell, init, options);
}

// PyTorch's bias option exists for the built-in cells, not for the examples' cells.
bool has_bias_option(const std::string& cell) { return cell != "mgu" && cell != "indrnn"; }

// The table's entry of a built-in cell; null for the examples' cells.
const CellInfo* cell_info_or_null(const std::string& cell) { return has_bias_option(cell) ? &cell_info(cell) : nullptr; }

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

Config random_config(Generator& g, std::size_t max_steps = 50) {
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

template <class T>
struct RunResult {
    std::vector<std::pair<std::string, xt::xarray<T>>> values;  // outputs, states, then gradients
};

// One forward and backward of `layer` on its current path; the loss is a random weighting of
// the chosen results (fixed by `seed`).
template <class T>
RunResult<T> run(Recurrent<T>& layer, const Config& c, std::uint64_t seed) {
    Generator g(seed);
    const std::size_t directions = c.bidirectional ? 2 : 1;
    Shape input_shape = c.batch_first ? Shape{c.batch, c.steps, c.input} : Shape{c.steps, c.batch, c.input};
    Tensor<T> x = random_tensor<T>(input_shape, g, 1.0, c.x_requires_grad);
    std::vector<Tensor<T>> initial;
    if (c.given_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s)
            initial.push_back(random_tensor<T>({c.layers * directions, c.batch, layer.state_size(s)}, g, 0.8, true));
    std::optional<std::vector<std::int64_t>> lengths;
    if (!c.lengths.empty()) lengths = c.lengths;

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

template <class T>
void property_test(std::size_t cases, std::uint64_t seed, double tolerance) {
    Generator g(seed);
    double worst = 0;
    std::size_t projected = 0;
    for (std::size_t i = 0; i < cases; ++i) {
        Config c = random_config(g);
        projected += c.proj_size > 0;
        worst = std::max(worst, compare_paths<T>(c, seed * 1000 + i, tolerance));
    }
    BOOST_TEST(projected > 0u);  // the draw reaches the output projection
    BOOST_TEST_MESSAGE(fmt::format("{} configurations ({} with proj_size), worst relative difference {:.3g} (tolerance {:.0e})",
                                   cases, projected, worst, tolerance));
}

// The cases that the random draw might miss, run explicitly in both precisions.
std::vector<Config> corner_cases() {
    std::vector<Config> list;
    for (const auto& cell : cells) {
        Config c;
        c.cell = cell;
        c.steps = 1;
        c.batch = 1;
        c.input = 1;
        c.hidden = 1;
        list.push_back(c);  // the smallest layer
        if (cell_info_or_null(cell) && cell_info_or_null(cell)->supports_projection) {
            c.hidden = 2;
            c.proj_size = 1;
            list.push_back(c);  // the smallest projected layer
            c.proj_size = 0;
        }
        c.steps = 7;
        c.batch = 5;
        c.input = 17;
        c.hidden = 33;
        c.layers = 2;
        c.bidirectional = true;
        c.lengths = {7, 1, 3, 7, 2};
        c.given_state = true;
        list.push_back(c);  // lengths, both directions, states, tails in both precisions
        if (has_bias_option(cell)) {
            c.bias = false;
            list.push_back(c);  // the same without biases (GRU's rule then has no b_hn)
            c.bias = true;
        }
        if (cell_info_or_null(cell) && cell_info_or_null(cell)->supports_projection) {
            c.proj_size = 5;
            list.push_back(c);  // the output projection: h of 5 units, odd against both SIMD widths
            c.proj_size = 0;
        }
        c.lengths = {1, 1, 1, 1, 1};
        list.push_back(c);  // every sequence one step long
        c.lengths.clear();
        c.use_output = false;
        list.push_back(c);  // only the final states reach the loss
        c.use_output = true;
        c.use_h = c.use_c = false;
        c.x_requires_grad = false;
        list.push_back(c);  // only the output; no gradient to x
    }
    return list;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_kernels)

BOOST_AUTO_TEST_CASE(corner_cases_match_generic_in_float64_and_float32) {
    std::uint64_t seed = 500;
    for (const auto& c : corner_cases()) {
        BOOST_TEST_CHECKPOINT(c.to_string());
        compare_paths<double>(c, seed, 1e-12);
        compare_paths<float>(c, seed, 1e-5);
        ++seed;
    }
}

BOOST_AUTO_TEST_CASE(random_configurations_match_generic_float64) { property_test<double>(120, 1, 1e-12); }

BOOST_AUTO_TEST_CASE(random_configurations_match_generic_float32) { property_test<float>(80, 2, 1e-5); }

BOOST_AUTO_TEST_CASE(inference_without_a_tape_matches) {
    Generator g(3);
    for (int i = 0; i < 20; ++i) {
        Config c = random_config(g);
        auto layer = make_layer<double>(c, ExecutionPath::fused, 40 + i);
        Generator gx(7);
        Shape shape = c.batch_first ? Shape{c.batch, c.steps, c.input} : Shape{c.steps, c.batch, c.input};
        Tensor<double> x = random_tensor<double>(shape, gx);
        std::optional<std::vector<std::int64_t>> lengths;
        if (!c.lengths.empty()) lengths = c.lengths;
        NoGradGuard no_grad;
        auto fused = layer->forward(x, {}, lengths);
        BOOST_TEST_REQUIRE(layer->uses_fused());
        BOOST_TEST(!fused.output.requires_grad());
        layer->set_path(ExecutionPath::generic);
        auto generic = layer->forward(x, {}, lengths);
        BOOST_TEST(relative_error(fused.output.value(), generic.output.value()) <= 1e-12, c.to_string());
        for (std::size_t s = 0; s < fused.state.size(); ++s)
            BOOST_TEST(relative_error(fused.state[s].value(), generic.state[s].value()) <= 1e-12, c.to_string());
    }
}

BOOST_AUTO_TEST_CASE(records_one_op_per_layer_and_direction) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 1});
    Generator g(1);
    auto x = random_tensor<double>({5, 2, 3}, g, 1.0, true);
    auto result = lstm->forward(x);
    BOOST_REQUIRE(result.output.grad_fn());
    BOOST_TEST(result.output.grad_fn()->name() == "fused_lstm");
    BOOST_TEST(result.output.grad_fn()->inputs().size() == 7u);  // x, 4 parameters, h0, c0
    BOOST_TEST(result.output.grad_fn()->num_outputs() == 3u);
}

BOOST_AUTO_TEST_CASE(gradcheck_passes_on_the_fused_path) {
    struct Case {
        std::string cell;
        std::size_t layers;
        bool bidirectional;
        std::vector<std::int64_t> lengths;
        bool given_state;
        bool bias = true;
        std::size_t proj_size = 0;
    };
    const std::vector<Case> cases{
        {"lstm", 1, false, {}, false},        {"gru", 1, false, {}, true},
        {"rnn_tanh", 2, true, {}, true},      {"rnn_relu", 1, true, {3, 1, 4}, false},
        {"lstm", 2, true, {4, 2, 3}, true},   {"gru", 2, true, {2, 4, 1}, true},
        {"mgu", 2, true, {2, 4, 1}, true},    {"indrnn", 2, true, {3, 4, 1}, true},
        {"rnn_tanh", 1, true, {}, true, false}, {"lstm", 2, false, {4, 2, 3}, true, false},
        {"gru", 2, true, {2, 4, 1}, true, false},
        // The output projection: dW_hr and dm = dh' W_hr in the driver, h0 of width P.
        {"lstm", 2, true, {4, 2, 3}, true, true, 2}, {"lstm", 3, false, {}, true, false, 3},
    };
    for (const auto& k : cases) {
        const std::size_t steps = 4, batch = k.lengths.empty() ? 2 : k.lengths.size(), input = 3, hidden = 5;
        const RecurrentOptions options{.input_size = input, .hidden_size = hidden, .num_layers = k.layers,
                                       .bidirectional = k.bidirectional, .path = ExecutionPath::fused, .seed = 7,
                                       .bias = k.bias, .proj_size = k.proj_size};
        auto layer = std::make_shared<Recurrent<double>>(factory_of<double>(k.cell, {}, options.cell_options()), options);
        Generator g(11);
        const Tensor<double> x = random_tensor<double>({steps, batch, input}, g, 1.0, true);
        std::vector<Tensor<double>> initial;
        if (k.given_state)
            for (std::size_t s = 0; s < layer->state_names().size(); ++s)
                initial.push_back(
                    random_tensor<double>({k.layers * (k.bidirectional ? 2 : 1), batch, layer->state_size(s)}, g, 0.5, true));
        std::optional<std::vector<std::int64_t>> lengths;
        if (!k.lengths.empty()) lengths = k.lengths;
        BOOST_REQUIRE(layer->options().path == ExecutionPath::fused);
        GradcheckReport report = gradcheck_layer(*layer, x, initial, lengths);
        BOOST_TEST(layer->uses_fused());
        BOOST_TEST(report.passed, k.cell << " L=" << k.layers << (k.bidirectional ? " bi" : "")
                                         << (k.bias ? "" : " no-bias") << " P=" << k.proj_size << ":\n"
                                         << report.to_string());
    }
}

BOOST_AUTO_TEST_CASE(truncated_bptt_matches_generic_chunk_by_chunk) {
    // TBPTT(3, 5) over 13 steps: overlapping windows, detached carried states, several chunks.
    for (const auto& cell : cells) {
        BOOST_TEST_CONTEXT(cell) {
            std::vector<std::vector<xt::xarray<double>>> grads_per_path;
            std::vector<std::vector<double>> losses_per_path;
            for (const auto path : {ExecutionPath::fused, ExecutionPath::generic}) {
                auto layer = std::make_shared<Recurrent<double>>(
                    factory_of<double>(cell), RecurrentOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2,
                                                               .path = path, .seed = 17});
                Generator g(5);
                const Tensor<double> stream = random_tensor<double>({13, 2, 3}, g, 1.0, false);
                std::vector<xt::xarray<double>> grads;
                std::vector<double> losses;
                truncated_bptt<double>(
                    *layer, stream, {.k1 = 3, .k2 = 5},
                    [](const Tensor<double>& outputs, std::size_t, std::size_t) { return sum(outputs * outputs); },
                    [&](const TbpttChunk<double>& chunk) {
                        losses.push_back(chunk.loss);
                        for (auto& p : layer->parameters()) grads.push_back(p.grad().value());
                        layer->zero_grad();
                    });
                grads_per_path.push_back(std::move(grads));
                losses_per_path.push_back(std::move(losses));
            }
            BOOST_TEST_REQUIRE(grads_per_path[0].size() == grads_per_path[1].size());
            BOOST_TEST(losses_per_path[0].size() == 5u);
            for (std::size_t i = 0; i < losses_per_path[0].size(); ++i)
                BOOST_TEST(std::abs(losses_per_path[0][i] - losses_per_path[1][i]) <= 1e-12 * std::abs(losses_per_path[1][i]));
            for (std::size_t i = 0; i < grads_per_path[0].size(); ++i)
                BOOST_TEST(relative_error(grads_per_path[0][i], grads_per_path[1][i]) <= 1e-12, "gradient " << i);
        }
    }
}

BOOST_AUTO_TEST_CASE(dropout_between_layers_matches_generic_with_the_same_seed) {
    for (const auto& cell : cells) {
        Config c;
        c.cell = cell;
        c.layers = 3;
        c.bidirectional = true;
        c.steps = 9;
        c.batch = 4;
        c.input = 5;
        c.hidden = 7;
        c.lengths = {9, 3, 6, 1};
        auto fused = make_layer<double>(c, ExecutionPath::fused, 21, 0.4);
        auto generic = make_layer<double>(c, ExecutionPath::generic, 21, 0.4);
        RunResult<double> a = run<double>(*fused, c, 5);
        BOOST_TEST_REQUIRE(fused->uses_fused());
        RunResult<double> b = run<double>(*generic, c, 5);
        expect_same_results(a, b, 1e-12, cell);
        // The masks really were drawn: a second training forward differs from the first.
        RunResult<double> again = run<double>(*fused, c, 5);
        BOOST_TEST(relative_error(again.values[0].second, a.values[0].second) > 1e-6);
        // In eval mode there is no dropout and the paths still agree.
        fused->eval();
        generic->eval();
        RunResult<double> e1 = run<double>(*fused, c, 6), e2 = run<double>(*generic, c, 6);
        for (std::size_t i = 0; i < e1.values.size(); ++i)
            BOOST_TEST(relative_error(e1.values[i].second, e2.values[i].second) <= 1e-12);
    }
}

BOOST_AUTO_TEST_CASE(double_backward_is_refused_with_a_pointer_to_the_generic_path) {
    auto gru = make_gru<double>({.input_size = 3, .hidden_size = 4});
    Generator g(2);
    auto x = random_tensor<double>({3, 2, 3}, g, 1.0, true);
    auto loss = sum(gru->forward(x).output);
    try {
        rw::grad<double>({loss}, {x}, {}, {.create_graph = true});
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("ExecutionPath::generic") != std::string::npos, message);
    }
    // The generic path supports it.
    gru->set_path(ExecutionPath::generic);
    auto loss2 = sum(gru->forward(x).output);
    auto dx = rw::grad<double>({loss2}, {x}, {}, {.create_graph = true});
    BOOST_TEST(dx[0].requires_grad());
}

BOOST_AUTO_TEST_CASE(saved_bytes_per_step_counts_what_backward_keeps) {
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("lstm").layout, 2, 10, 4) == 2u * (40 + 10 + 10) * 4);
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("gru").layout, 2, 10, 8) == 2u * (30 + 10 + 10) * 8);
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("rnn_tanh").layout, 1, 10, 4) == (10u + 10) * 4);
    // With a projection to P = 3: h before the step has 3 units, and m [H] is kept for dW_hr.
    fused::CellLayout projected = cell_info("lstm").layout;
    projected.projection = true;
    BOOST_TEST(fused::saved_bytes_per_step(projected, 2, 10, 4, false, 3) == 2u * (40 + 3 + 10 + 10) * 4);
}

// An LSTM's rules under a layout that does not fit its weights.
struct MislaidRules : fused::CellRules<float> {
    explicit MislaidRules(const LSTMCell<float>& cell) : cell(cell) {}
    const std::type_info& rules_cell_type() const override { return typeid(LSTMCell<float>); }
    fused::CellLayout layout() const override { return {.gates = 3, .states = 1, .recurrent = 3}; }
    fused::CellWeights<float> weights() const override { return cell.weights(); }
    void forward(const fused::ForwardRow<float>&) const override {}
    void backward(const fused::BackwardRow<float>&) const override {}
    const LSTMCell<float>& cell;
};

BOOST_AUTO_TEST_CASE(direct_calls_check_their_arguments) {
    Generator g(4);
    auto x = random_tensor<float>({3, 2, 5}, g);
    const LSTMCell<float> lstm(5, 4, g);
    const auto& rules = *lstm.usable_fused_rules();
    auto h0 = Tensor<float>::zeros({2, 4});
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, x, {h0}, {}, false, "lstm"),
                      std::invalid_argument);  // LSTM needs c0
    BOOST_CHECK_THROW(fused::run_sequence<float>(MislaidRules(lstm), x, {h0}, {}, false, "mislaid"),
                      std::invalid_argument);  // 16 rows are not 3 * H
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, random_tensor<float>({3, 2, 6}, g), {h0, h0}, {}, false, "lstm"),
                      ShapeError);  // the input size is not weight_ih's
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, x, {h0, h0}, {4, 1}, false, "lstm"),
                      std::invalid_argument);  // a length beyond T
    auto result = fused::run_sequence<float>(rules, x, {h0, h0}, {3, 1}, true, "lstm");
    BOOST_TEST(result.output.shape() == (Shape{3, 2, 4}));
    BOOST_TEST(result.final_state.size() == 2u);
}

// A subclass that changes step() of a built-in cell: the LSTM with its cell state clipped.
template <class T>
class ClippedLSTMCell : public LSTMCell<T> {
public:
    using LSTMCell<T>::LSTMCell;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override {
        State<T> next = LSTMCell<T>::step(x_t, state);
        next[1] = mul(next[1], Tensor<T>::full(next[1].shape(), T(0.5)));
        return next;
    }
};

BOOST_AUTO_TEST_CASE(a_subclass_that_overrides_step_does_not_inherit_the_fused_rules) {
    RecurrentOptions options{.input_size = 3, .hidden_size = 4, .path = ExecutionPath::fused, .seed = 3};
    auto clipped = std::make_shared<Recurrent<double>>(
        [](std::size_t in, std::size_t hidden, Generator& g) { return std::make_shared<ClippedLSTMCell<double>>(in, hidden, g); },
        options);
    auto plain = make_lstm<double>(options);
    Generator g(8);
    const auto x = random_tensor<double>({5, 2, 3}, g);
    const auto on_subclass = clipped->forward(x);
    BOOST_TEST(!clipped->uses_fused());
    BOOST_TEST(clipped->path_note().find("parent class") != std::string::npos, clipped->path_note());
    // It ran the subclass's own step(): the result is not the plain LSTM's.
    const auto on_lstm = plain->forward(x);
    BOOST_TEST(plain->uses_fused());
    BOOST_TEST(relative_error(on_subclass.output.value(), on_lstm.output.value()) > 1e-3);
    clipped->set_path(ExecutionPath::generic);
    BOOST_TEST(relative_error(clipped->forward(x).output.value(), on_subclass.output.value()) == 0.0);
}

// A user's cell without fused rules.
template <class T>
class PlainCell : public RecurrentCell<T> {
public:
    PlainCell(std::size_t in, std::size_t hidden) : RecurrentCell<T>(in, hidden) {}
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override {
        return {tanh(add(sum(x_t, {1}, true), state[0]))};
    }
};

BOOST_AUTO_TEST_CASE(fused_on_a_cell_without_rules_runs_step_and_says_so) {
    Recurrent<double> layer([](std::size_t in, std::size_t hidden, Generator&) { return std::make_shared<PlainCell<double>>(in, hidden); },
                            {.input_size = 2, .hidden_size = 3, .num_layers = 2, .path = ExecutionPath::fused});
    Generator g(1);
    layer.forward(random_tensor<double>({4, 2, 2}, g));
    BOOST_TEST(!layer.uses_fused());
    BOOST_TEST(layer.path_note() == "layer 0 direction 0: the cell has no fused rules");
    layer.set_path(ExecutionPath::generic);
    layer.forward(random_tensor<double>({4, 2, 2}, g));
    BOOST_TEST(layer.path_note().empty());
}

BOOST_AUTO_TEST_CASE(an_lstm_with_proj_size_runs_on_the_fused_path_with_weight_hr_as_an_input) {
    auto layer = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                    .path = ExecutionPath::fused, .proj_size = 2});
    Generator g(2);
    const auto result = layer->forward(random_tensor<double>({5, 2, 3}, g, 1.0, true));
    BOOST_TEST(layer->uses_fused());
    BOOST_TEST(layer->path_note().empty(), layer->path_note());
    BOOST_TEST(result.output.shape() == Shape({5, 2, 4}));  // D * proj_size
    BOOST_TEST(result.h_n().shape() == Shape({4, 2, 2}));
    BOOST_TEST(result.c_n().shape() == Shape({4, 2, 4}));
    // One op per layer and direction, with weight_hr among its inputs: x, 4 parameters, weight_hr, h0, c0.
    auto one = make_lstm<double>({.input_size = 3, .hidden_size = 4, .proj_size = 2});
    const auto output = one->forward(random_tensor<double>({5, 2, 3}, g, 1.0, true)).output;
    BOOST_REQUIRE(output.grad_fn());
    BOOST_TEST(output.grad_fn()->name() == "fused_lstm");
    BOOST_TEST(output.grad_fn()->inputs().size() == 8u);
    BOOST_TEST(output.grad_fn()->inputs().at(5).shape() == Shape({2, 4}));  // weight_hr [P, H]
}

BOOST_AUTO_TEST_CASE(the_graph_keeps_the_cells_rules_alive_past_the_layer) {
    Generator g(1);
    auto x = random_tensor<double>({4, 2, 3}, g, 1.0, true);
    Tensor<double> loss;
    {
        auto gru = make_gru<double>({.input_size = 3, .hidden_size = 4});
        loss = sum(gru->forward(x).output);
        BOOST_TEST(gru->uses_fused());
    }
    loss.backward();  // the layer is gone; its cells live on with the graph
    BOOST_TEST(x.grad().defined());
}

BOOST_AUTO_TEST_CASE(a_step_observer_runs_step_and_says_so) {
    auto gru = make_gru<double>({.input_size = 2, .hidden_size = 3});
    gru->set_step_observer([](std::size_t, std::size_t, std::size_t, const Tensor<double>&) {});
    Generator g(1);
    gru->forward(random_tensor<double>({3, 1, 2}, g));
    BOOST_TEST(!gru->uses_fused());
    BOOST_TEST(gru->path_note().find("observer") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_table_of_cells_matches_the_cells_it_makes) {
    BOOST_TEST(cell_names() == (std::vector<std::string>{"rnn_tanh", "rnn_relu", "lstm", "gru"}));
    for (const auto& info : cell_table()) {
        BOOST_TEST_CONTEXT(info.name) {
            BOOST_TEST(info.fused);
            BOOST_TEST(info.gate_names.size() == info.gates);
            Generator g(0);
            const auto cell = cell_factory<float>(info.name)(3, 5, g);
            BOOST_TEST(cell->kind() == info.name);
            BOOST_TEST(cell->state_names() == info.state_names);
            BOOST_TEST(cell->named_parameters().at(0).second.size(0) == info.gates * 5);
            // Projections where the cell narrows h for proj_size; its rules then say so in the layout.
            const auto projected = cell_factory<float>(info.name, {}, {.proj_size = 2})(3, 5, g);
            BOOST_TEST(info.supports_projection == (projected->state_size(0) == 2));
            BOOST_TEST(projected->usable_fused_rules()->layout().projection == info.supports_projection);
        }
    }
    BOOST_TEST(cell_info("lstm").supports_projection);
    BOOST_TEST(!cell_info("gru").supports_projection);
    BOOST_CHECK_EXCEPTION(cell_info("mgu"), std::invalid_argument, [](const std::invalid_argument& e) {
        return std::string(e.what()).find("rnn_tanh, rnn_relu, lstm, gru") != std::string::npos;
    });
}

BOOST_AUTO_TEST_SUITE_END()

// Recomputation (recompute.hpp): a layer that keeps only every k-th state and reruns segments in
// backward gives the numbers of the layer that keeps every step, on both paths.
BOOST_AUTO_TEST_SUITE(recompute)

namespace {

// The same layer and data run keeping every step and with segments of `segment` steps; every
// output and gradient within `tolerance` (relative), and the segments really used.
void compare_recomputation(const Config& c, ExecutionPath path, std::size_t segment, std::uint64_t seed) {
    auto full = make_layer<double>(c, path, seed);
    const RunResult<double> kept = run<double>(*full, c, seed + 1);
    BOOST_TEST_REQUIRE(full->last_recompute_segment() == 0u);
    auto layer = make_layer<double>(c, path, seed);
    layer->set_recompute({.enabled = true, .segment = segment});
    const RunResult<double> rerun = run<double>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(layer->last_recompute_segment() == segment, c.to_string());
    BOOST_TEST_REQUIRE(layer->uses_fused() == (path == ExecutionPath::fused), c.to_string() << layer->path_note());
    expect_same_results(rerun, kept, 1e-12, fmt::format("segment {} on {}", segment, c.to_string()));
}

// Random configurations of at least two steps, each with a random segment length below T.
void property_test_recomputation(ExecutionPath path, std::size_t cases, std::uint64_t seed) {
    Generator g(seed);
    for (std::size_t i = 0; i < cases; ++i) {
        Config c = random_config(g, 30);
        c.steps = std::max<std::size_t>(c.steps, 2);
        for (auto& length : c.lengths) length = std::min<std::int64_t>(length, std::int64_t(c.steps));
        const std::size_t segment = 1 + static_cast<std::size_t>(g.uniform(0, 1) * double(c.steps - 1)) % (c.steps - 1);
        compare_recomputation(c, path, segment, seed * 100 + i);
    }
}

}  // namespace

BOOST_AUTO_TEST_CASE(fused_recomputation_matches_keeping_every_step) {
    property_test_recomputation(ExecutionPath::fused, 60, 71);
}

BOOST_AUTO_TEST_CASE(generic_recomputation_matches_keeping_every_step) {
    property_test_recomputation(ExecutionPath::generic, 25, 72);
}

BOOST_AUTO_TEST_CASE(every_cell_with_lengths_and_both_directions_recomputes_exactly) {
    for (const auto& cell : cells) {
        Config c;
        c.cell = cell;
        c.steps = 11;
        c.batch = 4;
        c.input = 5;
        c.hidden = 9;
        c.layers = 2;
        c.bidirectional = true;
        c.lengths = {11, 3, 7, 1};
        c.given_state = true;
        for (std::size_t segment : {1u, 3u, 4u, 10u}) {
            compare_recomputation(c, ExecutionPath::fused, segment, 900 + segment);
            compare_recomputation(c, ExecutionPath::generic, segment, 900 + segment);
        }
    }
}

BOOST_AUTO_TEST_CASE(gradcheck_passes_with_recomputation_on_both_paths) {
    for (auto path : {ExecutionPath::fused, ExecutionPath::generic}) {
        auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                       .path = path, .recompute = {.enabled = true, .segment = 2}});
        Generator g(12);
        const Tensor<double> x = random_tensor<double>({5, 3, 3}, g, 1.0, true);
        const std::vector<Tensor<double>> initial{random_tensor<double>({4, 3, 4}, g, 0.5, true),
                                                  random_tensor<double>({4, 3, 4}, g, 0.5, true)};
        const GradcheckReport report = gradcheck_layer(*lstm, x, initial, std::vector<std::int64_t>{5, 2, 4});
        BOOST_TEST(report.passed, report.to_string());
        BOOST_TEST(lstm->last_recompute_segment() == 2u);
        BOOST_TEST(lstm->uses_fused() == (path == ExecutionPath::fused));
    }
}

BOOST_AUTO_TEST_CASE(the_fused_driver_keeps_fewer_bytes_when_recomputing) {
    auto peak_of = [](const RecomputeOptions& recompute) {
        auto lstm = make_lstm<float>({.input_size = 8, .hidden_size = 32, .recompute = recompute});
        Generator g(5);
        auto x = random_tensor<float>({400, 4, 8}, g, 1.0, true);
        fused::reset_driver_memory_peak();
        const std::size_t before = fused::driver_memory().live;
        auto result = lstm->forward(x);
        backward<float>({sum(result.output)}, {Tensor<float>()});
        return fused::driver_memory().peak - before;
    };
    const std::size_t full = peak_of({});
    const std::size_t segmented = peak_of({.enabled = true});  // segments of 20 steps
    const std::size_t step = fused::saved_bytes_per_step(cell_info("lstm").layout, 4, 32, sizeof(float));
    BOOST_TEST_MESSAGE(fmt::format("driver peak: {} bytes keeping every step, {} recomputing", full, segmented));
    BOOST_TEST(full >= 400 * step);
    BOOST_TEST(segmented * 5 < full);
}

BOOST_AUTO_TEST_CASE(the_segment_length_follows_the_options) {
    BOOST_TEST(recompute_segment({}, 10000, 100, 10) == 0u);
    BOOST_TEST(recompute_segment({.enabled = true}, 10000, 100, 10) == 100u);
    BOOST_TEST(recompute_segment({.enabled = true}, 10, 100, 10) == 4u);
    BOOST_TEST(recompute_segment({.enabled = true, .segment = 7}, 100, 100, 10) == 7u);
    BOOST_TEST(recompute_segment({.enabled = true, .segment = 100}, 100, 100, 10) == 0u);
    // Everything fits: nothing to recompute.
    BOOST_TEST(recompute_segment({.enabled = true, .memory_budget = 100000}, 1000, 100, 10) == 0u);
    // The longest segment whose footprint fits: k steps plus ceil(1000 / k) checkpoints.
    const std::size_t k = recompute_segment({.enabled = true, .memory_budget = 20000}, 1000, 100, 10);
    BOOST_TEST(recompute_footprint(1000, k, 100, 10) <= 20000u);
    BOOST_TEST(recompute_footprint(1000, k + 1, 100, 10) > 20000u);
    testing::expect_error<std::invalid_argument>(
        [] { recompute_segment({.enabled = true, .memory_budget = 100}, 1000, 100, 10); },
        {"memory budget of 100 bytes", "smallest footprint for 1000 steps"});
}

BOOST_AUTO_TEST_CASE(a_step_observer_turns_recomputation_off) {
    auto gru = make_gru<double>({.input_size = 2, .hidden_size = 3, .recompute = {.enabled = true, .segment = 2}});
    std::size_t seen = 0;
    gru->set_step_observer([&](std::size_t, std::size_t, std::size_t, const Tensor<double>&) { ++seen; });
    Generator g(1);
    gru->forward(random_tensor<double>({6, 2, 2}, g, 1.0, true));
    BOOST_TEST(seen == 6u);
    BOOST_TEST(gru->last_recompute_segment() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// Note: Threads (sequence.cpp): with two threads the driver splits the batch into row groups.
BOOST_AUTO_TEST_SUITE(row_groups_on_threads)

namespace {

// Sets the GEMM layer's threads for one scope.
struct ThreadsFor {
    explicit ThreadsFor(int threads) : before(blas::num_threads()) { blas::set_num_threads(threads); }
    ~ThreadsFor() { blas::set_num_threads(before); }
    int before;
};

}  // namespace

BOOST_AUTO_TEST_CASE(two_threads_split_the_batch_and_give_the_one_thread_numbers) {
    Generator g(81);
    std::size_t checked = 0;
    while (checked < 30) {
        Config c = random_config(g, 25);
        if (c.batch < 8) continue;
        auto one = make_layer<double>(c, ExecutionPath::fused, 700 + checked);
        RunResult<double> single;
        {
            ThreadsFor threads(1);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 1u);
            single = run<double>(*one, c, 800 + checked);
        }
        auto two = make_layer<double>(c, ExecutionPath::fused, 700 + checked);
        if (c.steps > 2) two->set_recompute({.enabled = true, .segment = c.steps / 2});  // windows on threads too
        RunResult<double> split;
        {
            ThreadsFor threads(2);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 2u);
            split = run<double>(*two, c, 800 + checked);
        }
        BOOST_TEST_REQUIRE(two->uses_fused());
        expect_same_results(split, single, 1e-12, "two threads on " + c.to_string());
        ++checked;
    }
}

// float runs its recurrent products on oneDNN's packed matmul: one primitive per shape, executed
// by both threads at once.
BOOST_AUTO_TEST_CASE(two_threads_in_float32_give_the_one_thread_numbers) {
    for (const std::string cell : {"lstm", "gru", "rnn_tanh"}) {
        Config c;
        c.cell = cell;
        c.steps = 30;
        c.batch = 16;
        c.input = 24;
        c.hidden = 40;
        c.bidirectional = true;
        c.lengths = {30, 2, 17, 30, 9, 30, 1, 30, 30, 5, 30, 30, 12, 30, 30, 3};
        RunResult<float> single, split;
        {
            ThreadsFor threads(1);
            single = run<float>(*make_layer<float>(c, ExecutionPath::fused, 5), c, 6);
        }
        {
            ThreadsFor threads(2);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 2u);
            split = run<float>(*make_layer<float>(c, ExecutionPath::fused, 5), c, 6);
        }
        expect_same_results(split, single, 1e-5, "two threads, float32, " + cell);
    }
}

BOOST_AUTO_TEST_CASE(groups_keep_at_least_four_rows) {
    ThreadsFor threads(2);
    BOOST_TEST(fused::row_groups(1) == 1u);
    BOOST_TEST(fused::row_groups(7) == 1u);
    BOOST_TEST(fused::row_groups(8) == 2u);
    BOOST_TEST(fused::row_groups(32) == 2u);
}

BOOST_AUTO_TEST_SUITE_END()
