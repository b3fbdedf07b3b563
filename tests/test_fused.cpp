// The built-in cells' fused rules (run by the one sequence driver) against the generic per-step
// tape: outputs, final states and every gradient, over randomized configurations, in float64 and
// float32, asserting that the fused path really ran; inference without a tape; gradcheck on the
// fused path; truncated BPTT; dropout between layers. The harness is fused_harness.hpp; which path
// a layer takes and the fused op's checks are in test_fused_paths.cpp, recomputation in
// test_fused_recompute.cpp, row groups on threads in test_fused_threads.cpp.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;
using testing::random_tensor;

namespace {

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

// Sizes where the driver sums dW_ih and dW_hh as one product over the rows of [x | h] (a tall,
// small weight over at least 4 (I + H) rows: note "one product for both weights" in
// nn/src/fused/sequence.cpp), with and without lengths, bias and both directions.
BOOST_AUTO_TEST_CASE(lstm_weight_gradients_summed_as_one_product_match_generic) {
    std::uint64_t seed = 700;
    for (const bool bidirectional : {false, true})
        for (const bool with_lengths : {false, true})
            for (const bool bias : {true, false}) {
                Config c{.cell = "lstm", .bidirectional = bidirectional, .steps = 20, .batch = 5, .input = 3, .hidden = 9};
                c.bias = bias;
                if (with_lengths) c.lengths = {20, 7, 13, 1, 20};
                BOOST_TEST_CHECKPOINT(c.to_string());
                compare_paths<double>(c, seed, 1e-12);
                compare_paths<float>(c, seed, 1e-5);
                ++seed;
            }
}

// Pre-activations far past where sigmoid and tanh saturate (weights scaled by 1e30; a fuzzed state
// dict found such) and NaN in the input: the fused rules give the generic path's values exactly,
// NaN where it has NaN (Note [Saturated arguments] in lanes.hpp).
template <class T>
void check_saturated_and_nan_inputs() {
    for (const std::string cell : {"lstm", "gru", "rnn_tanh"}) {
        BOOST_TEST_CHECKPOINT(cell);
        auto layer = make_recurrent<T>(cell, {.input_size = 3, .hidden_size = 19, .seed = 4});
        for (auto& parameter : layer->parameters()) parameter.mutable_value() *= T(1e30);
        Generator g(5);
        Tensor<T> x = random_tensor<T>({4, 3, 3}, g, 1.0);
        x.mutable_value()(2, 1, 0) = std::numeric_limits<T>::quiet_NaN();
        layer->set_path(ExecutionPath::fused);
        const xt::xarray<T> fused = layer->forward(x).output.value();
        BOOST_REQUIRE(layer->uses_fused());
        layer->set_path(ExecutionPath::generic);
        const xt::xarray<T> generic = layer->forward(x).output.value();
        std::size_t nans = 0;
        for (std::size_t i = 0; i < fused.size(); ++i) {
            const T f = fused.data()[i], g_value = generic.data()[i];
            nans += std::isnan(g_value);
            BOOST_TEST((std::isnan(f) == std::isnan(g_value) && (std::isnan(f) || f == g_value)),
                       cell << " element " << i << ": fused " << f << " generic " << g_value);
        }
        BOOST_TEST(nans > 0u);  // the NaN went through both paths
    }
}

// The SIMD lanes of exp, sigmoid and tanh against the scalar formulas at and past saturation, at
// infinities and NaN (16 values: whole batches, so no scalar tail).
template <class T>
void check_lane_functions() {
    const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
    const std::vector<T> xs{nan, inf, -inf, T(1e30), T(-1e30), T(1000), T(-1000), T(50),
                            T(-50), T(0.5), T(-0.5), T(0), T(88), T(-104), T(2), T(-2)};
    std::vector<T> e(xs.size()), s(xs.size()), t(xs.size());
    fused::lanes<T>(xs.size(), [&](std::size_t j, auto tag) {
        using V = decltype(tag);
        BOOST_TEST(!std::is_arithmetic_v<V>);  // whole batches: the SIMD code is what is checked
        const V x = fused::load_lane<V>(xs.data() + j);
        fused::store_lane(e.data() + j, fused::exp_lane(x));
        fused::store_lane(s.data() + j, fused::sigmoid_lane(x));
        fused::store_lane(t.data() + j, fused::tanh_lane(x));
    });
    auto same = [](T got, T want) {
        if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
        if (std::isinf(want) || want == 0) return got == want;
        return std::abs(got - want) <= 8 * std::numeric_limits<T>::epsilon() * std::abs(want);
    };
    for (std::size_t i = 0; i < xs.size(); ++i) {
        const T x = xs[i];
        BOOST_TEST(same(e[i], std::exp(x)), "exp(" << x << ") = " << e[i]);
        BOOST_TEST(same(s[i], T(1) / (T(1) + std::exp(-x))), "sigmoid(" << x << ") = " << s[i]);
        BOOST_TEST(same(t[i], std::tanh(x)), "tanh(" << x << ") = " << t[i]);
    }
}

BOOST_AUTO_TEST_CASE(lane_functions_saturate_and_keep_nan) {
    check_lane_functions<double>();
    check_lane_functions<float>();
}

BOOST_AUTO_TEST_CASE(saturated_and_nan_pre_activations_give_the_generic_values) {
    check_saturated_and_nan_inputs<double>();
    check_saturated_and_nan_inputs<float>();
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

BOOST_AUTO_TEST_SUITE_END()
