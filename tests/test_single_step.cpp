// Single steps on raw input (cell.forward_step, Recurrent::step), one layer and direction of a
// stacked state (Recurrent::state_of, PyTorch's layer-major order) and the shape errors of both.

#include <boost/test/unit_test.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using testing::expect_error;
using testing::max_abs_difference;
using testing::random_tensor;
using Array = xt::xarray<double>;

namespace {

const char* const cells[] = {"rnn_tanh", "rnn_relu", "lstm", "gru"};

std::vector<Tensor<double>> random_state(const Recurrent<double>& layer, std::size_t batch, Generator& generator) {
    std::vector<Tensor<double>> state;
    for (std::size_t s = 0; s < layer.state_names().size(); ++s)
        state.push_back(random_tensor({layer.options().num_layers * layer.num_directions(), batch,
                                       layer.options().hidden_size}, generator, 0.5));
    return state;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(single_step)

BOOST_AUTO_TEST_CASE(a_cells_forward_step_on_raw_input_equals_the_layers_first_step) {
    for (const char* cell : cells)
        BOOST_TEST_CONTEXT(cell) {
            auto layer = make_recurrent<double>(cell, {.input_size = 2, .hidden_size = 6, .seed = 3});
            Generator generator(4);
            const Tensor<double> x = random_tensor({3, 2}, generator);
            const auto initial = random_state(*layer, 3, generator);
            const auto whole = layer->forward(reshape(x, {1, 3, 2}), initial);
            State<double> state;
            for (const auto& s : initial) state.push_back(layer->state_of(s, 0));
            const State<double> next = layer->cell(0, 0).forward_step(x, state);
            BOOST_REQUIRE(next.size() == whole.state.size());
            for (std::size_t s = 0; s < next.size(); ++s)
                BOOST_TEST(max_abs_difference(next[s].value(), layer->state_of(whole.state[s], 0).value()) <= 1e-14);
        }
}

BOOST_AUTO_TEST_CASE(stepping_a_stacked_layer_token_by_token_equals_its_forward_over_the_sequence) {
    for (const char* cell : cells)
        for (const auto initial : {InitialState::zeros, InitialState::learned})
            BOOST_TEST_CONTEXT(cell << (initial == InitialState::learned ? " learned initial state" : "")) {
                auto layer = make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 4, .num_layers = 2,
                                                           .initial_state = initial, .seed = 5});
                Generator generator(6);
                for (auto& [name, parameter] : layer->named_parameters())
                    if (name.starts_with("initial_")) parameter.mutable_value() = random_tensor({4}, generator).value();
                const Tensor<double> x = random_tensor({5, 2, 3}, generator);
                const auto whole = layer->forward(x);
                std::vector<Tensor<double>> state;  // empty: the layer's own initial state, as forward()
                for (std::size_t t = 0; t < 5; ++t) {
                    const auto result = layer->step(reshape(slice(x, 0, t, t + 1), {2, 3}), state);
                    BOOST_TEST(result.output.shape() == (Shape{2, 4}));
                    const Tensor<double> expected = reshape(slice(whole.output, 0, t, t + 1), {2, 4});
                    BOOST_TEST(max_abs_difference(result.output.value(), expected.value()) <= 1e-14, "step " << t);
                    state = result.state;
                }
                for (std::size_t s = 0; s < state.size(); ++s)
                    BOOST_TEST(max_abs_difference(state[s].value(), whole.state[s].value()) <= 1e-14);
            }
}

BOOST_AUTO_TEST_CASE(gradients_flow_through_steps_as_through_forward) {
    auto layer = make_lstm<double>({.input_size = 2, .hidden_size = 3, .num_layers = 2, .seed = 7});
    Generator generator(8);
    const Tensor<double> x = random_tensor({4, 2, 2}, generator);
    sum(layer->forward(x).output).backward();
    std::vector<Array> expected;
    for (auto& parameter : layer->parameters()) expected.push_back(parameter.grad().value());
    layer->zero_grad();
    std::vector<Tensor<double>> state;
    Tensor<double> total = Tensor<double>::scalar(0.0);
    for (std::size_t t = 0; t < 4; ++t) {
        const auto result = layer->step(reshape(slice(x, 0, t, t + 1), {2, 2}), state);
        total = add(total, sum(result.output));
        state = result.state;
    }
    total.backward();
    const auto parameters = layer->parameters();
    for (std::size_t i = 0; i < parameters.size(); ++i)
        BOOST_TEST(max_abs_difference(parameters[i].grad().value(), expected[i]) <= 1e-13);
}

BOOST_AUTO_TEST_CASE(a_step_on_input_of_the_wrong_width_names_the_expected_width) {
    auto layer = make_gru<double>({.input_size = 2, .hidden_size = 6});
    const Tensor<double> projected = Tensor<double>::zeros({3, 18});
    expect_error<ShapeError>([&] { layer->cell(0, 0).forward_step(projected, {Tensor<double>::zeros({3, 6})}); },
                             {"gru forward_step: input x has the wrong shape: expected [B, 2] (input_size 2), got [3, 18]"});
    expect_error<ShapeError>([&] { layer->step(projected); },
                             {"recurrent layer step: input x has the wrong shape: expected [B, 2] (input_size), got [3, 18]"});
}

BOOST_AUTO_TEST_CASE(a_state_of_the_wrong_shape_names_the_state_and_both_shapes) {
    auto layer = make_rnn<double>({.input_size = 2, .hidden_size = 6});
    const Tensor<double> x = Tensor<double>::zeros({3, 2});
    expect_error<ShapeError>([&] { layer->step(x, {Tensor<double>::zeros({3, 6})}); },
                             {"recurrent layer: initial state 'h' has the wrong shape: expected [1, 3, 6], got [3, 6]"});
    expect_error<ShapeError>([&] { layer->forward(reshape(x, {1, 3, 2}), {Tensor<double>::zeros({3, 6})}); },
                             {"initial state 'h' has the wrong shape: expected [1, 3, 6], got [3, 6]"});
    expect_error<ShapeError>([&] { layer->cell(0, 0).forward_step(x, {Tensor<double>::zeros({1, 3, 6})}); },
                             {"rnn_tanh forward_step: state 'h' has the wrong shape: expected [3, 6], got [1, 3, 6]"});
    expect_error<std::invalid_argument>([&] { layer->cell(0, 0).forward_step(x, {}); },
                                        {"0 state tensors given, expected 1"});
}

BOOST_AUTO_TEST_CASE(a_bidirectional_layer_refuses_a_whole_stack_step_and_points_to_the_cells) {
    auto layer = make_gru<double>({.input_size = 2, .hidden_size = 3, .bidirectional = true});
    expect_error<std::logic_error>([&] { layer->step(Tensor<double>::zeros({1, 2})); },
                                   {"unidirectional", "cell(layer, direction).forward_step()"});
}

BOOST_AUTO_TEST_CASE(final_states_are_layer_major_then_direction_as_pytorch) {
    // The last layer's forward direction ends at step T-1, its reverse direction at step 0.
    auto layer = make_lstm<double>({.input_size = 2, .hidden_size = 3, .num_layers = 2, .bidirectional = true, .seed = 9});
    Generator generator(10);
    const auto result = layer->forward(random_tensor({4, 2, 2}, generator));
    BOOST_TEST(result.h_n().shape() == (Shape{4, 2, 3}));
    const Tensor<double> last = reshape(slice(result.output, 0, 3, 4), {2, 6});
    const Tensor<double> first = reshape(slice(result.output, 0, 0, 1), {2, 6});
    BOOST_TEST(max_abs_difference(layer->state_of(result.h_n(), 1, 0).value(), slice(last, 1, 0, 3).value()) == 0.0);
    BOOST_TEST(max_abs_difference(layer->state_of(result.h_n(), 1, 1).value(), slice(first, 1, 3, 6).value()) == 0.0);
    BOOST_TEST(max_abs_difference(layer->state_of(result.c_n(), 0, 1).value(),
                                  reshape(slice(result.c_n(), 0, 1, 2), {2, 3}).value()) == 0.0);
    expect_error<std::out_of_range>([&] { layer->state_of(result.h_n(), 2, 0); }, {"layer 2", "2 layer(s)"});
    expect_error<ShapeError>([&] { layer->state_of(layer->state_of(result.h_n(), 0, 0), 0, 0); },
                             {"expected [4, B, 3] (L*D, B, H), got [2, 3]"});
}

BOOST_AUTO_TEST_SUITE_END()
