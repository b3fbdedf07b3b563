#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using Array = xt::xarray<double>;
using testing::random_tensor;

namespace {

struct LayerCase {
    std::string cell;
    std::size_t layers = 1;
    bool bidirectional = false;
    std::vector<std::int64_t> lengths;  // empty: full length
    bool given_initial_state = false;
    InitialState initial = InitialState::zeros;
    bool bias = true;
    std::size_t proj_size = 0;
};

// Gradient check of a whole layer: every parameter, x and the given initial states, through
// output, h_n and (LSTM) c_n.
GradcheckReport check_layer(const LayerCase& c, std::shared_ptr<Recurrent<double>> layer = nullptr) {
    const std::size_t steps = 4, batch = c.lengths.empty() ? 2 : c.lengths.size(), input_size = 3;
    const std::size_t hidden = c.proj_size > 0 ? 3 : 2;
    if (!layer) {
        RecurrentOptions options{.input_size = input_size, .hidden_size = hidden, .num_layers = c.layers,
                                 .bidirectional = c.bidirectional, .initial_state = c.initial,
                                 .path = ExecutionPath::generic, .seed = 7, .bias = c.bias, .proj_size = c.proj_size};
        layer = make_recurrent<double>(c.cell, options);
    }
    Generator generator(11);
    const Tensor<double> x = random_tensor({steps, batch, input_size}, generator, 1.0, true);
    std::vector<Tensor<double>> initial;
    if (c.given_initial_state)
        for (std::size_t s = 0; s < layer->state_names().size(); ++s)
            initial.push_back(
                random_tensor({c.layers * (c.bidirectional ? 2 : 1), batch, layer->state_size(s)}, generator, 0.5, true));
    std::optional<std::vector<std::int64_t>> lengths;
    if (!c.lengths.empty()) lengths = c.lengths;
    return gradcheck_layer(*layer, x, initial, lengths);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(recurrent_layers)

BOOST_AUTO_TEST_CASE(parameter_names_and_shapes_are_pytorchs) {
    auto lstm = make_lstm<float>({.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true});
    std::vector<std::string> expected{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                      "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
                                      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1",
                                      "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse"};
    auto named = lstm->named_parameters();
    BOOST_REQUIRE_EQUAL(named.size(), expected.size());
    for (std::size_t i = 0; i < named.size(); ++i) BOOST_TEST(named[i].first == expected[i]);
    BOOST_TEST(lstm->parameter("weight_ih_l0").shape() == Shape({20, 3}));
    BOOST_TEST(lstm->parameter("weight_ih_l1").shape() == Shape({20, 10}));
    BOOST_TEST(lstm->parameter("weight_hh_l1_reverse").shape() == Shape({20, 5}));
    auto gru = make_gru<float>({.input_size = 3, .hidden_size = 5});
    BOOST_TEST(gru->parameter("bias_hh_l0").shape() == Shape({15}));
}

BOOST_AUTO_TEST_CASE(without_bias_only_the_weights_exist_under_pytorchs_names) {
    for (std::string cell : {"rnn_tanh", "rnn_relu", "lstm", "gru"}) {
        auto layer = make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 5, .num_layers = 2,
                                                   .bidirectional = true, .bias = false});
        std::vector<std::string> names;
        for (const auto& [name, p] : layer->named_parameters()) names.push_back(name);
        const std::vector<std::string> expected{"weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse",
                                                "weight_hh_l0_reverse", "weight_ih_l1", "weight_hh_l1",
                                                "weight_ih_l1_reverse", "weight_hh_l1_reverse"};
        BOOST_TEST(names == expected, cell);
    }
}

BOOST_AUTO_TEST_CASE(an_lstm_with_proj_size_has_weight_hr_and_projected_shapes) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true,
                                   .proj_size = 2});
    std::vector<std::string> names;
    for (const auto& [name, p] : lstm->named_parameters()) names.push_back(name);
    const std::vector<std::string> expected_l0{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"};
    BOOST_TEST(std::vector<std::string>(names.begin(), names.begin() + 5) == expected_l0);
    BOOST_TEST(names.size() == 20u);
    BOOST_TEST(lstm->parameter("weight_hh_l0").shape() == Shape({20, 2}));
    BOOST_TEST(lstm->parameter("weight_hr_l0_reverse").shape() == Shape({2, 5}));
    BOOST_TEST(lstm->parameter("weight_ih_l1").shape() == Shape({20, 4}));  // proj_size * D
    auto result = lstm->forward(Tensor<double>::ones({6, 3, 3}));
    BOOST_TEST(result.output.shape() == Shape({6, 3, 4}));
    BOOST_TEST(result.h_n().shape() == Shape({4, 3, 2}));
    BOOST_TEST(result.c_n().shape() == Shape({4, 3, 5}));
}

BOOST_AUTO_TEST_CASE(proj_size_outside_an_lstm_or_not_below_hidden_size_is_a_clear_error) {
    auto message_of = [](auto make) -> std::string {
        try {
            make();
        } catch (const std::invalid_argument& e) {
            return e.what();
        }
        return "no error";
    };
    const std::string gru = message_of([] { make_gru<double>({.input_size = 3, .hidden_size = 5, .proj_size = 2}); });
    BOOST_TEST(gru.find("expected 2 (proj_size), got 5") != std::string::npos, gru);
    BOOST_TEST(gru.find("LSTM option") != std::string::npos, gru);
    const std::string big = message_of([] { make_lstm<double>({.input_size = 3, .hidden_size = 5, .proj_size = 5}); });
    BOOST_TEST(big.find("proj_size must be smaller than hidden_size: expected < 5, got 5") != std::string::npos, big);
}

BOOST_AUTO_TEST_CASE(output_and_state_shapes) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 3, .bidirectional = true});
    auto result = lstm->forward(Tensor<double>::ones({5, 2, 3}));
    BOOST_TEST(result.output.shape() == Shape({5, 2, 8}));
    BOOST_TEST(result.h_n().shape() == Shape({6, 2, 4}));
    BOOST_TEST(result.c_n().shape() == Shape({6, 2, 4}));
}

BOOST_AUTO_TEST_CASE(every_cell_passes_gradcheck_in_every_configuration) {
    for (std::string cell : {"rnn_tanh", "rnn_relu", "lstm", "gru"})
        for (std::size_t layers : {1, 2, 3})
            for (bool bidirectional : {false, true})
                for (bool with_lengths : {false, true})
                    for (bool with_initial : {false, true}) {
                        // Keep the product small: three layers only with both options on.
                        if (layers == 3 && !(with_lengths && with_initial)) continue;
                        LayerCase c{cell, layers, bidirectional, with_lengths ? std::vector<std::int64_t>{4, 2, 1} : std::vector<std::int64_t>{},
                                    with_initial};
                        auto report = check_layer(c);
                        BOOST_TEST(report.passed, cell << " layers=" << layers << " bidirectional=" << bidirectional
                                                       << " lengths=" << with_lengths << " h0=" << with_initial << "\n"
                                                       << report.to_string());
                    }
}

BOOST_AUTO_TEST_CASE(every_cell_without_bias_passes_gradcheck) {
    for (std::string cell : {"rnn_tanh", "rnn_relu", "lstm", "gru"})
        for (bool bidirectional : {false, true}) {
            LayerCase c{.cell = cell, .layers = 2, .bidirectional = bidirectional, .lengths = {4, 2, 1},
                        .given_initial_state = true, .bias = false};
            auto report = check_layer(c);
            BOOST_TEST(report.passed, cell << " bidirectional=" << bidirectional << "\n" << report.to_string());
        }
}

BOOST_AUTO_TEST_CASE(an_lstm_with_proj_size_passes_gradcheck) {
    const std::vector<LayerCase> cases{
        {.cell = "lstm", .proj_size = 1},
        {.cell = "lstm", .layers = 2, .bidirectional = true, .lengths = {4, 2, 1}, .given_initial_state = true,
         .proj_size = 2},
        {.cell = "lstm", .layers = 3, .given_initial_state = true, .bias = false, .proj_size = 2},
        {.cell = "lstm", .layers = 2, .bidirectional = true, .initial = InitialState::learned, .proj_size = 1},
    };
    for (const auto& c : cases) {
        auto report = check_layer(c);
        BOOST_TEST(report.passed, "L=" << c.layers << " P=" << c.proj_size << "\n" << report.to_string());
    }
}

BOOST_AUTO_TEST_CASE(learned_initial_state_is_trained_and_gradchecked) {
    LayerCase c{"lstm", 2, true, {3, 4}, false, InitialState::learned};
    auto report = check_layer(c);
    BOOST_TEST(report.passed, report.to_string());
    bool found = false;
    for (auto& input : report.inputs) found = found || input.name == "initial_c_l1_reverse";
    BOOST_TEST(found);
}

BOOST_AUTO_TEST_CASE(outputs_past_a_sequence_end_are_zero_and_h_n_is_taken_at_its_end) {
    auto gru = make_gru<double>({.input_size = 2, .hidden_size = 3, .bidirectional = true, .path = ExecutionPath::generic});
    Generator generator(3);
    auto x = random_tensor({5, 2, 2}, generator, 1.0, true);
    auto result = gru->forward(x, {}, std::vector<std::int64_t>{5, 2});
    for (std::size_t t = 2; t < 5; ++t)
        for (std::size_t j = 0; j < 6; ++j) BOOST_TEST(result.output.value()(t, 1, j) == 0.0);
    // The short sequence alone, run to its own end, gives the same h_n.
    auto alone = gru->forward(Tensor<double>(xt::view(x.value(), xt::range(0, 2), xt::range(1, 2), xt::all())));
    for (std::size_t d = 0; d < 2; ++d)
        for (std::size_t j = 0; j < 3; ++j)
            BOOST_TEST(result.h_n().value()(d, 1, j) == alone.h_n().value()(d, 0, j), boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(batch_first_matches_time_major) {
    auto lstm = make_lstm<double>({.input_size = 2, .hidden_size = 3, .seed = 4});
    auto lstm_bf = make_lstm<double>({.input_size = 2, .hidden_size = 3, .batch_first = true, .seed = 4});
    Generator generator(5);
    auto x = random_tensor({4, 3, 2}, generator, 1.0, true);
    auto a = lstm->forward(x);
    auto b = lstm_bf->forward(permute(x, {1, 0, 2}));
    BOOST_TEST(xt::allclose(permute(b.output, {1, 0, 2}).value(), a.output.value(), 0.0, 1e-15));
}

BOOST_AUTO_TEST_CASE(bad_lengths_are_clear_errors) {
    auto rnn = make_rnn<double>({.input_size = 2, .hidden_size = 3});
    auto x = Tensor<double>::ones({4, 2, 2});
    auto message_of = [&](std::vector<std::int64_t> lengths) {
        try {
            rnn->forward(x, {}, lengths);
        } catch (const std::invalid_argument& error) {
            return std::string(error.what());
        }
        return std::string("no error");
    };
    BOOST_TEST(message_of({0, 2}).find("length 0 of sequence 0") != std::string::npos);
    BOOST_TEST(message_of({2, 5}).find("length 5 of sequence 1 is outside 1..4") != std::string::npos);
    BOOST_TEST(message_of({2}).find("1 lengths given for a batch of 2") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(wrong_input_size_names_the_shapes) {
    auto rnn = make_rnn<double>({.input_size = 2, .hidden_size = 3});
    try {
        rnn->forward(Tensor<double>::ones({4, 2, 5}));
        BOOST_FAIL("no error");
    } catch (const ShapeError& error) {
        BOOST_TEST(std::string(error.what()).find("[4, 2, 5]") != std::string::npos);
    }
}

BOOST_AUTO_TEST_CASE(seeded_initialisation_is_reproducible_and_in_pytorchs_range) {
    auto a = make_gru<double>({.input_size = 3, .hidden_size = 4, .seed = 9});
    auto b = make_gru<double>({.input_size = 3, .hidden_size = 4, .seed = 9});
    for (auto& [name, tensor] : a->named_parameters()) {
        BOOST_TEST(tensor.value() == b->parameter(name).value());
        BOOST_TEST(xt::amax(xt::abs(tensor.value()))() <= 0.5);  // 1/sqrt(4)
    }
}

BOOST_AUTO_TEST_CASE(orthogonal_initialisation_gives_orthogonal_recurrent_blocks) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .init = {.orthogonal_recurrent = true, .forget_bias = 1.0}});
    Array w = lstm->parameter("weight_hh_l0").value();
    for (std::size_t g = 0; g < 4; ++g) {
        Array block = xt::view(w, xt::range(4 * g, 4 * g + 4), xt::all());
        Array product = Tensor<double>(block).value();
        Array gram = matmul(Tensor<double>(block), transpose(Tensor<double>(block))).value();
        BOOST_TEST(xt::allclose(gram, xt::eye<double>(4), 0.0, 1e-12));
    }
    BOOST_TEST(lstm->parameter("bias_ih_l0").value()(4) + lstm->parameter("bias_hh_l0").value()(4) == 1.0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---- a user's cell plugs into the same machinery ----

namespace {

// A peephole LSTM (Gers & Schmidhuber): the gates also see the cell state, written from ops only.
class PeepholeLSTMCell : public RecurrentCell<double> {
public:
    PeepholeLSTMCell(std::size_t input_size, std::size_t hidden_size, Generator& generator)
        : RecurrentCell<double>(input_size, hidden_size) {
        const double bound = 1.0 / std::sqrt(double(hidden_size));
        weight_ih_ = register_parameter("weight_ih", Tensor<double>(init::uniform<double>({4 * hidden_size, input_size}, -bound, bound, generator)));
        weight_hh_ = register_parameter("weight_hh", Tensor<double>(init::uniform<double>({4 * hidden_size, hidden_size}, -bound, bound, generator)));
        bias_ = register_parameter("bias", Tensor<double>(init::uniform<double>({4 * hidden_size}, -bound, bound, generator)));
        peephole_ = register_parameter("peephole", Tensor<double>(init::uniform<double>({3, hidden_size}, -bound, bound, generator)));
    }
    std::vector<std::string> state_names() const override { return {"h", "c"}; }
    State<double> step(const Tensor<double>& x, const State<double>& state) const override {
        auto gates = chunk(add(add(gemm(x, weight_ih_, false, true), gemm(state[0], weight_hh_, false, true)), bias_), 4, 1);
        auto peep = chunk(peephole_, 3, 0);
        auto input_gate = sigmoid(add(gates[0], mul(peep[0], state[1])));
        auto forget_gate = sigmoid(add(gates[1], mul(peep[1], state[1])));
        auto c = add(mul(forget_gate, state[1]), mul(input_gate, tanh(gates[2])));
        auto output_gate = sigmoid(add(gates[3], mul(peep[2], c)));
        return {mul(output_gate, tanh(c)), c};
    }

private:
    Tensor<double> weight_ih_, weight_hh_, bias_, peephole_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(user_cells)

BOOST_AUTO_TEST_CASE(peephole_lstm_in_a_stacked_bidirectional_layer_with_lengths_passes_gradcheck) {
    auto layer = std::make_shared<Recurrent<double>>(
        [](const CellSite& site, Generator& generator) {
            return std::make_shared<PeepholeLSTMCell>(site.input_size, site.hidden_size, generator);
        },
        RecurrentOptions{.input_size = 3, .hidden_size = 2, .num_layers = 2, .bidirectional = true, .seed = 1});
    BOOST_TEST(layer->parameter("peephole_l1_reverse").shape() == Shape({3, 2}));
    auto report = check_layer({"", 2, true, {4, 1, 3}, true}, layer);
    BOOST_TEST(report.passed, report.to_string());
}

BOOST_AUTO_TEST_SUITE_END()

// ---- state dicts on disk ----

namespace {

std::filesystem::path temp_file(const std::string& name) {
    auto dir = std::filesystem::temp_directory_path() / ("rewind_nn_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    return dir / name;
}

template <class M>
std::vector<Array> snapshot(const M& module) {
    std::vector<Array> values;
    for (auto& [name, tensor] : module.named_parameters()) values.push_back(tensor.value());
    return values;
}

template <class M>
std::string failed_load(M& module, const std::filesystem::path& file, bool strict = true) {
    auto before = snapshot(module);
    std::string message = "no error";
    try {
        load_state_dict(module, file, strict);
    } catch (const SafetensorsError& error) {
        message = error.what();
    }
    BOOST_TEST((snapshot(module) == before), "module changed by a failed load");
    return message;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(state_dicts)

BOOST_AUTO_TEST_CASE(save_then_load_restores_every_parameter) {
    auto a = make_lstm<double>({.input_size = 3, .hidden_size = 2, .num_layers = 2, .seed = 1});
    auto b = make_lstm<double>({.input_size = 3, .hidden_size = 2, .num_layers = 2, .seed = 2});
    auto file = temp_file("roundtrip.safetensors");
    save_state_dict(*a, file);
    load_state_dict(*b, file);
    BOOST_TEST((snapshot(*a) == snapshot(*b)));
}

BOOST_AUTO_TEST_CASE(a_shape_mismatch_names_file_and_key_and_changes_nothing) {
    auto small = make_gru<double>({.input_size = 3, .hidden_size = 2});
    auto big = make_gru<double>({.input_size = 3, .hidden_size = 4});
    auto file = temp_file("big.safetensors");
    save_state_dict(*big, file);
    auto message = failed_load(*small, file);
    BOOST_TEST(message.find(file.string()) != std::string::npos);
    BOOST_TEST(message.find("'weight_ih_l0'") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_missing_key_is_an_error_and_an_unexpected_key_only_when_strict) {
    auto one = make_rnn<double>({.input_size = 3, .hidden_size = 2});
    auto two = make_rnn<double>({.input_size = 3, .hidden_size = 2, .num_layers = 2});
    auto file_one = temp_file("one.safetensors"), file_two = temp_file("two.safetensors");
    save_state_dict(*one, file_one);
    save_state_dict(*two, file_two);
    BOOST_TEST(failed_load(*two, file_one).find("'weight_ih_l1': missing") != std::string::npos);
    BOOST_TEST(failed_load(*one, file_two).find("'bias_hh_l1': unexpected") != std::string::npos);
    load_state_dict(*one, file_two, /*strict=*/false);
    BOOST_TEST((snapshot(*one)[0] == two->parameter("weight_ih_l0").value()));
}

BOOST_AUTO_TEST_CASE(a_truncated_file_names_the_file_and_changes_nothing) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 2});
    auto file = temp_file("truncated.safetensors");
    save_state_dict(*lstm, file);
    std::filesystem::resize_file(file, std::filesystem::file_size(file) - 10);
    auto other = make_lstm<double>({.input_size = 3, .hidden_size = 2, .seed = 3});
    BOOST_TEST(failed_load(*other, file).find(file.string()) != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
