// Training: the layers around a recurrent core, the sequence losses and recurrent (variational) dropout (nn/src/layers/layers.cpp).

#include <array>

#include <boost/test/unit_test.hpp>

#include "training_checks.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::training_checks;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(training)

// ---- layers and losses ----

BOOST_AUTO_TEST_CASE(linear_maps_every_position_and_embedding_picks_rows) {
    Generator generator(3);
    Linear<double> linear(3, 2, generator);
    for (const double w : linear.weight().value()) BOOST_TEST(std::abs(w) <= 1 / std::sqrt(3.0));
    const Tensor<double> x = random_tensor({4, 2, 3}, generator);
    const Array y = linear.forward(x).value();
    BOOST_REQUIRE(to_shape(y.shape()) == (Shape{4, 2, 2}));
    const Array& w = linear.weight().value();
    for (std::size_t t = 0; t < 4; ++t)
        for (std::size_t o = 0; o < 2; ++o) {
            double expected = linear.bias().value()(o);
            for (std::size_t i = 0; i < 3; ++i) expected += x.value()(t, 1, i) * w(o, i);
            BOOST_TEST(y(t, 1, o) == expected, tt::tolerance(1e-14));
        }
    Embedding<double> embedding(5, 3, generator);
    const Array rows = embedding.forward(xt::xarray<std::int64_t>{{4, 0}, {4, 2}}).value();
    BOOST_CHECK(xt::view(rows, 1, 0, xt::all()) == xt::view(embedding.weight().value(), 4, xt::all()));
    BOOST_CHECK(xt::view(rows, 0, 1, xt::all()) == xt::view(embedding.weight().value(), 0, xt::all()));
}

BOOST_AUTO_TEST_CASE(sequence_cross_entropy_averages_only_the_steps_within_each_length) {
    Generator generator(9);
    const Tensor<double> logits = random_tensor({3, 2, 4}, generator);
    const xt::xarray<std::int64_t> targets{{1, 3}, {2, -1}, {-1, -1}};  // -1: padding past the lengths
    const double loss = sequence_cross_entropy(logits, targets, std::vector<std::int64_t>{2, 1}).item();
    double expected = 0;
    for (auto [t, b] : {std::pair{0, 0}, std::pair{1, 0}, std::pair{0, 1}}) {
        const auto row = xt::view(logits.value(), t, b, xt::all());
        expected -= row(targets(t, b)) - std::log(xt::sum(xt::exp(row))());
    }
    BOOST_TEST(loss == expected / 3, tt::tolerance(1e-14));
}

// ---- the cell factory: told which layer and direction it builds ----

BOOST_AUTO_TEST_CASE(cell_factory_is_told_each_layer_and_direction_in_build_order) {
    std::vector<CellSite> sites;
    const CellFactory<double> factory = [&](const CellSite& site, Generator&) {
        sites.push_back(site);
        return std::make_shared<ProbeCell>(site.input_size, site.hidden_size);
    };
    Recurrent<double> layer(factory, {.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
    BOOST_REQUIRE(sites.size() == 4u);
    const std::vector<std::array<std::size_t, 3>> expected{{0, 0, 3}, {0, 1, 3}, {1, 0, 10}, {1, 1, 10}};
    for (std::size_t i = 0; i < 4; ++i) {
        BOOST_TEST_CONTEXT("cell " << i) {
            BOOST_TEST(sites[i].layer == expected[i][0]);
            BOOST_TEST(sites[i].direction == expected[i][1]);
            BOOST_TEST(sites[i].input_size == expected[i][2]);
            BOOST_TEST(sites[i].hidden_size == 5u);
            BOOST_TEST(sites[i].num_layers == 2u);
            BOOST_TEST(sites[i].num_directions == 2u);
            BOOST_TEST(sites[i].last_layer() == (i >= 2));
        }
    }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
// The earlier factory form (input_size, hidden_size, generator) still builds the same layer.
BOOST_AUTO_TEST_CASE(an_earlier_form_factory_still_builds_the_same_layer) {
    const CellFactory<double> earlier = [](std::size_t input_size, std::size_t hidden_size, Generator& g) {
        return std::make_shared<GRUCell<double>>(input_size, hidden_size, g);
    };
    Recurrent<double> old_style(earlier, {.input_size = 3, .hidden_size = 4, .num_layers = 2, .seed = 6});
    auto built_in = make_gru<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .seed = 6});
    BOOST_REQUIRE(old_style.named_parameters().size() == built_in->named_parameters().size());
    for (const auto& [name, parameter] : built_in->named_parameters())
        BOOST_CHECK(old_style.parameter(name).value() == parameter.value());
}
#pragma GCC diagnostic pop

// ---- seeding: one style, options with .seed ----

BOOST_AUTO_TEST_CASE(linear_and_embedding_take_a_seed_and_draw_as_from_a_generator_of_that_seed) {
    Generator g(17);
    const Linear<double> from_generator(3, 2, g);
    const Linear<double> from_seed({.in_features = 3, .out_features = 2, .seed = 17});
    BOOST_CHECK(from_seed.weight().value() == from_generator.weight().value());
    BOOST_CHECK(from_seed.bias().value() == from_generator.bias().value());
    BOOST_TEST(!Linear<double>({.in_features = 3, .out_features = 2, .bias = false}).bias().defined());
    Generator e(4);
    const Embedding<double> embedding_from_generator(5, 3, e);
    const Embedding<double> embedding_from_seed({.num_embeddings = 5, .dim = 3, .seed = 4});
    BOOST_CHECK(embedding_from_seed.weight().value() == embedding_from_generator.weight().value());
}

// ---- recurrent (variational) dropout ----

BOOST_AUTO_TEST_CASE(variational_dropout_masks_are_fixed_over_time_and_differ_per_sequence) {
    std::vector<std::shared_ptr<ProbeCell>> probes;
    auto factory = [&](const CellSite& site, Generator&) {
        probes.push_back(std::make_shared<ProbeCell>(site.input_size, site.hidden_size));
        return std::shared_ptr<RecurrentCell<double>>(probes.back());
    };
    auto layer = make_variational_recurrent<double>(factory, {.input_size = 16, .hidden_size = 16, .num_layers = 2, .seed = 1},
                                                    {.input = 0.5, .hidden = 0.5});
    const std::size_t steps = 5;
    layer->forward(Tensor<double>::ones({steps, 4, 16}));
    std::vector<Array> input_masks;
    for (const auto& probe : probes) {
        BOOST_REQUIRE(probe->inputs.size() == steps);
        const Array input_mask = probe->inputs[0], hidden_mask = probe->hiddens[1];  // h_0 is zeros
        for (std::size_t t = 0; t < steps; ++t) BOOST_CHECK(probe->inputs[t] == input_mask);
        for (std::size_t t = 1; t < steps; ++t) BOOST_CHECK(probe->hiddens[t] == hidden_mask);
        BOOST_TEST(rows_differ(input_mask));
        BOOST_TEST(rows_differ(hidden_mask));
        BOOST_TEST(xt::all(xt::equal(input_mask, 0.0) || xt::equal(input_mask, 2.0)));  // inverted dropout
        BOOST_CHECK(input_mask != hidden_mask);
        input_masks.push_back(input_mask);
        probe->inputs.clear(), probe->hiddens.clear();
    }
    BOOST_CHECK(input_masks[0] != input_masks[1]);  // each layer its own
    layer->forward(Tensor<double>::ones({steps, 4, 16}));
    BOOST_CHECK(probes[0]->inputs[0] != input_masks[0]);  // each forward new sequences, new masks
}

BOOST_AUTO_TEST_CASE(variational_dropout_is_off_in_eval_mode) {
    std::vector<std::shared_ptr<ProbeCell>> probes;
    auto factory = [&](const CellSite& site, Generator&) {
        probes.push_back(std::make_shared<ProbeCell>(site.input_size, site.hidden_size));
        return std::shared_ptr<RecurrentCell<double>>(probes.back());
    };
    auto layer = make_variational_recurrent<double>(factory, {.input_size = 8, .hidden_size = 8}, {.input = 0.5, .hidden = 0.5});
    layer->eval();
    layer->forward(Tensor<double>::ones({3, 2, 8}));
    for (std::size_t t = 0; t < 3; ++t) BOOST_TEST(xt::all(xt::equal(probes[0]->inputs[t], 1.0)));
    for (std::size_t t = 1; t < 3; ++t) BOOST_TEST(xt::all(xt::equal(probes[0]->hiddens[t], 1.0)));
    const auto& cell = dynamic_cast<const VariationalDropoutCell<double>&>(layer->cell(0, 0));
    BOOST_TEST(cell.input_mask().size() == 0u);
}

BOOST_AUTO_TEST_CASE(variational_dropout_lstm_passes_gradcheck_with_the_mask_fixed) {
    auto layer = make_variational_recurrent<double>("lstm", {.input_size = 3, .hidden_size = 4, .num_layers = 2, .seed = 8},
                                                    {.input = 0.3, .hidden = 0.3});
    Generator generator(4);
    std::vector<Tensor<double>> inputs{random_tensor({4, 2, 3}, generator, 1.0, true)};
    for (auto& parameter : layer->parameters()) inputs.push_back(parameter);
    const std::string masks = layer->generator().state();
    auto function = [&](const std::vector<Tensor<double>>& xs) {
        layer->generator().set_state(masks);  // the same masks at every evaluation
        auto result = layer->forward(xs[0]);
        return concat(std::vector<Tensor<double>>{reshape(result.output, {32}), reshape(result.c_n(), {16})}, 0);
    };
    const GradcheckReport report = gradcheck(function, inputs);
    BOOST_TEST(report.passed, report.to_string());
    const auto& cell = dynamic_cast<const VariationalDropoutCell<double>&>(layer->cell(1, 0));
    BOOST_TEST(xt::any(xt::equal(cell.hidden_mask(), 0.0)));  // the masks really dropped something
}

BOOST_AUTO_TEST_SUITE_END()
