// Second order through the fused path (Note [Second order through the fused op],
// nn/src/fused/replay.hpp): the fused layer's double backward equals the generic layer's for
// every cell with fused rules, over the parity harness's random configurations, with the fused
// op and its second-order op asserted to have run; what is refused, and how it says so.

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

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
struct SecondOrderRun {
    std::vector<std::pair<std::string, xt::xarray<T>>> values;  // first-order gradients, then second-order
    std::vector<std::string> first_order_ops;                   // what made each parameter's first-order gradient
};

// loss = Σ <s, tanh(result)> over the results the configuration uses, so dL/d(result) depends on
// the result and the second-order rule's J v part is exercised; g = dL/dθ with create_graph;
// loss2 = Σ <w, g> + <g_0, g_0>; returns g and dloss2/dθ. `between` runs after g, before loss2's
// backward (a planted fault).
template <class T>
SecondOrderRun<T> second_order_run(Recurrent<T>& layer, const Config& c, std::uint64_t seed,
                                   const std::function<void()>& between = {}) {
    Generator g(seed);
    const auto [x, initial, lengths] = draw_inputs(layer, c, g);
    auto result = layer.forward(x, initial, lengths);

    std::vector<Tensor<T>> terms;
    auto add_term = [&](const Tensor<T>& r) { terms.push_back(sum(mul(random_tensor<T>(r.shape(), g, 1.0), tanh(r)))); };
    if (c.use_output) add_term(result.output);
    if (c.use_h) add_term(result.h_n());
    if (c.use_c && result.state.size() > 1) add_term(result.c_n());
    if (terms.empty()) add_term(result.output);
    Tensor<T> loss = terms[0];
    for (std::size_t k = 1; k < terms.size(); ++k) loss = add(loss, terms[k]);

    std::vector<std::string> names;
    std::vector<Tensor<T>> targets;
    for (auto& [name, p] : layer.named_parameters()) {
        names.push_back(name);
        targets.push_back(p);
    }
    if (c.x_requires_grad) {
        names.push_back("x");
        targets.push_back(x);
    }
    for (std::size_t s = 0; s < initial.size(); ++s) {
        names.push_back("initial " + layer.state_names()[s]);
        targets.push_back(initial[s]);
    }
    const std::vector<Tensor<T>> first = rw::grad<T>({loss}, targets, {}, {.create_graph = true});
    SecondOrderRun<T> run;
    Tensor<T> loss2;
    for (std::size_t k = 0; k < first.size(); ++k) {
        const xt::xarray<T> value = first[k].defined() ? first[k].value() : xt::xarray<T>(xt::zeros<T>(targets[k].shape()));
        run.values.emplace_back("d" + names[k], value);
        if (k < layer.named_parameters().size() && names[k].rfind("initial_", 0) != 0)
            run.first_order_ops.push_back(first[k].defined() && first[k].grad_fn() ? first[k].grad_fn()->name() : "none");
        if (!first[k].defined() || !first[k].requires_grad()) continue;
        Tensor<T> term = sum(mul(random_tensor<T>(first[k].shape(), g, 1.0), first[k]));
        if (k == 0) term = add(term, sum(mul(first[k], first[k])));
        loss2 = loss2.defined() ? add(loss2, term) : term;
    }
    BOOST_TEST_REQUIRE(loss2.defined(), c.to_string() << ": no first-order gradient depends on θ");
    if (between) between();
    const std::vector<Tensor<T>> second = rw::grad<T>({loss2}, targets);
    for (std::size_t k = 0; k < second.size(); ++k)
        run.values.emplace_back("d2 " + names[k], second[k].defined() ? second[k].value()
                                                                       : xt::xarray<T>(xt::zeros<T>(targets[k].shape())));
    return run;
}

// The fused run against the generic run of the same layer; the fused one must have run the fused
// op and, for every weight, its second-order op.
template <class T>
double compare_second_order(const Config& c, std::uint64_t seed, double tolerance, std::size_t recompute = 0) {
    auto layer = make_layer<T>(c, ExecutionPath::fused, seed);
    if (recompute > 0) layer->set_recompute({.enabled = true, .segment = recompute});
    const SecondOrderRun<T> fused = second_order_run<T>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(layer->uses_fused(), c.to_string() << ": " << layer->path_note());
    if (recompute > 0 && recompute < c.steps) BOOST_TEST(layer->last_recompute_segment() == recompute);
    for (const auto& op : fused.first_order_ops)
        BOOST_TEST((op.rfind("fused_", 0) == 0 && op.ends_with("_backward")), c.to_string() << ": made by " << op);
    // The generic path's recomputation (rw::checkpoint) refuses create_graph: its reference keeps every step.
    layer->set_path(ExecutionPath::generic);
    layer->set_recompute({});
    const SecondOrderRun<T> generic = second_order_run<T>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(!layer->uses_fused());
    for (const auto& op : generic.first_order_ops) BOOST_TEST(op.find("fused") == std::string::npos);
    BOOST_REQUIRE_EQUAL(fused.values.size(), generic.values.size());
    double worst = 0;
    for (std::size_t i = 0; i < fused.values.size(); ++i) {
        const double error = relative_error(fused.values[i].second, generic.values[i].second);
        worst = std::max(worst, error);
        BOOST_CHECK_MESSAGE(error <= tolerance, fmt::format("{}: {} differs by {:.3g} (relative) on {}",
                                                            sizeof(T) == 8 ? "float64" : "float32",
                                                            fused.values[i].first, error, c.to_string()));
    }
    return worst;
}

// The cells whose weights the driver reads as the cell's own parameters: every cell of the table
// and the examples' MGU and IndRNN (the LN-LSTM hands the driver slices, see below).
std::vector<std::string> second_order_cells() {
    std::vector<std::string> names;
    for (const auto& cell : cells)
        if (cell != "ln_lstm") names.push_back(cell);
    return names;
}

template <class T>
Tensor<T> loss_of(Recurrent<T>& layer, const Tensor<T>& x) {
    auto result = layer.forward(x);
    return sum(mul(result.output, result.output));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_second_order)

BOOST_AUTO_TEST_CASE(double_backward_equals_the_generic_paths_for_every_cell_in_float64) {
    Generator g(2026);
    double worst = 0;
    for (const auto& cell : second_order_cells())
        for (int round = 0; round < 8; ++round) {
            const Config c = small_random_config(cell, g);
            BOOST_TEST_MESSAGE(c.to_string());
            BOOST_TEST_CONTEXT(c.to_string()) { worst = std::max(worst, compare_second_order<double>(c, 100 + round, 1e-12)); }
        }
    BOOST_TEST_MESSAGE(fmt::format("worst relative difference, float64: {:.3g}", worst));
}

BOOST_AUTO_TEST_CASE(double_backward_equals_the_generic_paths_with_recomputation) {
    Generator g(7);
    for (const auto& cell : second_order_cells()) {
        Config c = small_random_config(cell, g);
        c.steps = 5;
        c.lengths.clear();
        compare_second_order<double>(c, 300, 1e-12, 2);
    }
}

BOOST_AUTO_TEST_CASE(double_backward_equals_the_generic_paths_in_float32) {
    Generator g(11);
    for (const auto& cell : second_order_cells()) {
        const Config c = small_random_config(cell, g);
        compare_second_order<float>(c, 400, 2e-4);
    }
}

BOOST_AUTO_TEST_CASE(a_replay_at_other_weights_than_the_forwards_is_caught) {
    // The second-order rule reads the weights when it runs: changed after the forward, the
    // replay differentiates another function, and the comparison must see it.
    Config c{.cell = "lstm", .layers = 1, .steps = 4, .batch = 2, .input = 3, .hidden = 4};
    auto layer = make_layer<double>(c, ExecutionPath::generic, 5);
    const SecondOrderRun<double> generic = second_order_run<double>(*layer, c, 6);
    layer->set_path(ExecutionPath::fused);
    Tensor<double> weight;
    for (auto& [name, p] : layer->named_parameters())
        if (name == "weight_hh_l0") weight = p;
    BOOST_TEST_REQUIRE(weight.defined());
    const SecondOrderRun<double> planted = second_order_run<double>(*layer, c, 6, [&] { weight.mutable_value() *= 1.001; });
    BOOST_TEST_REQUIRE(layer->uses_fused());
    double worst = 0;
    for (std::size_t i = 0; i < generic.values.size(); ++i)
        worst = std::max(worst, relative_error(planted.values[i].second, generic.values[i].second));
    BOOST_TEST(worst > 1e-6, "the planted replay went unnoticed: worst difference " << worst);
}

BOOST_AUTO_TEST_CASE(a_gradient_penalty_with_weight_decay_equals_the_generic_paths) {
    // WGAN-GP's shape: ||dL/dx||² differentiated w.r.t. the weights, fused against generic. The
    // weight decay term reaches the weights before the second-order rule runs: the rule's own
    // passes over the same weights must leave that partial sum alone (Note [Nested passes]).
    Generator g(8);
    auto gru = make_gru<double>({.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true, .seed = 3});
    const auto x = random_tensor<double>({4, 2, 3}, g, 1.0, true);
    auto penalty_gradients = [&] {
        const Tensor<double> dx = rw::grad<double>({loss_of(*gru, x)}, {x}, {}, {.create_graph = true})[0];
        Tensor<double> penalty = sum(mul(dx, dx));
        for (const auto& p : gru->parameters()) penalty = add(penalty, sum(mul(p, p)));
        return rw::grad<double>({penalty}, gru->parameters());
    };
    const auto fused = penalty_gradients();
    BOOST_TEST_REQUIRE(gru->uses_fused());
    gru->set_path(ExecutionPath::generic);
    const auto generic = penalty_gradients();
    for (std::size_t k = 0; k < fused.size(); ++k)
        BOOST_TEST(relative_error(fused[k].value(), generic[k].value()) <= 1e-12, "parameter " << k);
}

BOOST_AUTO_TEST_CASE(third_order_is_refused_naming_the_second_order_op) {
    Generator g(9);
    auto lstm = make_lstm<double>({.input_size = 2, .hidden_size = 3});
    const auto x = random_tensor<double>({3, 2, 2}, g, 1.0, true);
    const Tensor<double> dx = rw::grad<double>({loss_of(*lstm, x)}, {x}, {}, {.create_graph = true})[0];
    try {
        rw::grad<double>({sum(mul(dx, dx))}, {x}, {}, {.create_graph = true});
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("'fused_lstm_backward'") != std::string::npos, message);
        BOOST_TEST(message.find("third-order") != std::string::npos, message);
        BOOST_TEST(message.find("ExecutionPath::generic") != std::string::npos, message);
    }
}

BOOST_AUTO_TEST_CASE(a_direct_run_sequence_has_no_replay_and_says_so_under_create_graph) {
    // A cell without tangent rules (the MGU): only the replay could answer (the built-in cells'
    // tangent sweeps need none, tests/test_fused_tangent.cpp).
    Generator g(10);
    const auto mgu = factory_of<double>("mgu")({.input_size = 3, .hidden_size = 4}, g);
    const std::shared_ptr<const fused::CellRules<double>> rules(mgu, mgu->usable_fused_rules());
    const auto x = random_tensor<double>({3, 2, 3}, g, 1.0, true);
    const std::vector<Tensor<double>> initial{Tensor<double>::zeros({2, 4})};
    const Tensor<double> loss = sum(fused::run_sequence<double>(rules, x, initial, {}, false, "lstm").output);
    // First order is untouched.
    BOOST_TEST(rw::grad<double>({loss}, {x}, {}, {.retain_graph = true})[0].defined());
    try {
        rw::grad<double>({loss}, {x}, {}, {.create_graph = true});
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("'fused_lstm'") != std::string::npos, message);
        BOOST_TEST(message.find("fused::run_sequence call was given none") != std::string::npos, message);
    }
}

BOOST_AUTO_TEST_CASE(a_cell_that_hands_the_driver_computed_weights_is_refused_naming_the_weight) {
    // The LN-LSTM's per-gate gains are slices of its parameters: the replay reads the parameters,
    // not the slices, so the second-order rule cannot give the slices' derivatives.
    Generator g(12);
    const Config c{.cell = "ln_lstm", .steps = 3, .batch = 2, .input = 2, .hidden = 5};
    auto layer = make_layer<double>(c, ExecutionPath::fused, 13);
    const auto x = random_tensor<double>({3, 2, 2}, g, 1.0, true);
    try {
        rw::grad<double>({loss_of(*layer, x)}, {x}, {}, {.create_graph = true});
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("weight input 'unit 0'") != std::string::npos, message);
        BOOST_TEST(message.find("'slice'") != std::string::npos, message);
    }
    layer->set_path(ExecutionPath::generic);
    BOOST_TEST(rw::grad<double>({loss_of(*layer, x)}, {x}, {}, {.create_graph = true})[0].requires_grad());
}

BOOST_AUTO_TEST_SUITE_END()
