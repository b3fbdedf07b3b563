// PyTorch's recurrent-layer tests that apply to a CPU library, ported to rewind's API; each case
// names the test of pytorch/pytorch's test/test_nn.py it follows (test/nn/test_packed_sequence.py
// tests the PackedSequence type's own utilities, which rewind's lengths argument does not have). Every case runs on both paths
// (fused and generic) and asserts which one ran.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace {

using rw::Tensor;
using rw::nn::ExecutionPath;
using rw::nn::RecurrentOptions;

const std::vector<ExecutionPath> kPaths = {ExecutionPath::fused, ExecutionPath::generic};
const std::vector<std::string> kCells = {"rnn_tanh", "lstm", "gru"};

std::string path_name(ExecutionPath path) { return path == ExecutionPath::fused ? "fused" : "generic"; }

Tensor<double> uniform_input(const rw::Shape& shape, std::uint64_t seed) {
    xt::random::seed(seed);
    return Tensor<double>(xt::xarray<double>(xt::random::rand<double>(shape)));
}

bool all_equal(const xt::xarray<double>& a, const xt::xarray<double>& b) { return a.shape() == b.shape() && a == b; }

// The message of the std::invalid_argument that `make` throws.
template <class F>
std::string refusal(F&& make) {
    try {
        make();
    } catch (const std::invalid_argument& error) {
        return error.what();
    }
    return "(nothing thrown)";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(torch_rnn)

// test_RNN_input_size_zero: a batch of 0 sequences gives output [T, 0, H] and a backward that
// works; the weights' gradients are zeros of their shapes.
BOOST_AUTO_TEST_CASE(test_RNN_input_size_zero_an_empty_batch_gives_an_empty_output_and_a_backward_that_works) {
    for (const auto& cell : kCells)
        for (ExecutionPath path : kPaths)
            BOOST_TEST_CONTEXT(cell << " " << path_name(path)) {
                auto rnn = rw::nn::make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 4, .path = path});
                const auto result = rnn->forward(Tensor<double>::zeros({5, 0, 3}));
                BOOST_TEST(rnn->uses_fused() == (path == ExecutionPath::fused));
                BOOST_TEST(result.output.shape() == (rw::Shape{5, 0, 4}), boost::test_tools::per_element());
                BOOST_TEST(result.h_n().shape() == (rw::Shape{1, 0, 4}), boost::test_tools::per_element());
                rw::sum(result.output).backward();
                for (const auto& [name, parameter] : rnn->named_parameters()) {
                    BOOST_TEST_REQUIRE(parameter.grad().defined(), name);
                    BOOST_TEST(parameter.grad().shape() == parameter.shape(), boost::test_tools::per_element());
                    BOOST_TEST(all_equal(parameter.grad().value(), xt::zeros<double>(parameter.shape())), name);
                }
            }
}

// The same for a bidirectional two-layer LSTM with an initial state of batch 0: [T, 0, 2H].
BOOST_AUTO_TEST_CASE(an_empty_batch_through_a_bidirectional_two_layer_lstm_gives_output_t_0_2h) {
    for (ExecutionPath path : kPaths)
        BOOST_TEST_CONTEXT(path_name(path)) {
            auto lstm = rw::nn::make_lstm<double>(
                {.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true, .path = path});
            const Tensor<double> h0 = Tensor<double>::zeros({4, 0, 4}, true), c0 = Tensor<double>::zeros({4, 0, 4});
            const auto result = lstm->forward(Tensor<double>::zeros({6, 0, 3}, true), {h0, c0});
            BOOST_TEST(lstm->uses_fused() == (path == ExecutionPath::fused));
            BOOST_TEST(result.output.shape() == (rw::Shape{6, 0, 8}), boost::test_tools::per_element());
            BOOST_TEST(result.c_n().shape() == (rw::Shape{4, 0, 4}), boost::test_tools::per_element());
            rw::sum(result.output).backward();
            BOOST_TEST(h0.grad().shape() == (rw::Shape{4, 0, 4}), boost::test_tools::per_element());
        }
}

// input_size = 0 (PyTorch builds weight_ih [G*H, 0]): the input adds nothing, the biases and the
// recurrence still run; both paths agree, and every parameter gets a gradient of its shape.
BOOST_AUTO_TEST_CASE(input_size_zero_gives_outputs_of_the_right_shape_equal_on_both_paths) {
    for (const auto& cell : kCells) {
        std::vector<xt::xarray<double>> outputs, gradients;
        for (ExecutionPath path : kPaths)
            BOOST_TEST_CONTEXT(cell << " " << path_name(path)) {
                auto rnn = rw::nn::make_recurrent<double>(cell, {.input_size = 0, .hidden_size = 4, .path = path, .seed = 7});
                BOOST_TEST(rnn->parameter("weight_ih_l0").shape() == (rw::Shape{rnn->parameter("weight_ih_l0").size(0), 0}),
                           boost::test_tools::per_element());
                const auto result = rnn->forward(Tensor<double>::zeros({5, 2, 0}));
                BOOST_TEST(rnn->uses_fused() == (path == ExecutionPath::fused));
                BOOST_TEST(result.output.shape() == (rw::Shape{5, 2, 4}), boost::test_tools::per_element());
                rw::sum(rw::mul(result.output, result.output)).backward();
                outputs.push_back(result.output.value());
                gradients.push_back(rnn->parameter("weight_hh_l0").grad().value());
                BOOST_TEST(rnn->parameter("weight_ih_l0").grad().shape() == rnn->parameter("weight_ih_l0").shape(),
                           boost::test_tools::per_element());
            }
        BOOST_TEST(xt::allclose(outputs[0], outputs[1], 1e-12, 1e-14), cell);
        BOOST_TEST(xt::allclose(gradients[0], gradients[1], 1e-12, 1e-14), cell);
        BOOST_TEST(xt::amax(xt::abs(outputs[0]))() > 0.0, cell);  // the biases and recurrence did run
    }
}

// test_RNN_dropout: dropout sits between the layers only. All weights 1, no bias, relu, one step
// of ones: layer 0 gives 10 per unit; layer 1 sums 1000 of them (dropped or scaled by 1/(1-p)).
BOOST_AUTO_TEST_CASE(test_RNN_dropout_sits_between_layers_and_p_1_gives_zeros) {
    for (double p : {0.0, 0.276, 0.731, 1.0})
        for (bool train : {true, false})
            for (ExecutionPath path : kPaths)
                BOOST_TEST_CONTEXT("p " << p << " train " << train << " " << path_name(path)) {
                    auto rnn = rw::nn::make_rnn<double>({.input_size = 10, .hidden_size = 1000, .num_layers = 2,
                                                         .dropout = p, .path = path, .seed = 3, .bias = false},
                                                        rw::nn::Nonlinearity::relu);
                    rnn->train(train);
                    for (auto& parameter : rnn->parameters()) parameter.mutable_value().fill(1.0);
                    const auto result = rnn->forward(Tensor<double>::ones({1, 1, 10}), {Tensor<double>::zeros({2, 1, 1000})});
                    BOOST_TEST(rnn->uses_fused() == (path == ExecutionPath::fused));
                    const auto& output = result.output.value();
                    BOOST_TEST(xt::amin(output)() == xt::amax(output)());
                    const double value = output(0, 0, 0);
                    if (p == 0.0 || !train) {
                        BOOST_TEST(value == 10000.0);
                    } else if (p == 1.0) {
                        BOOST_TEST(value == 0.0);
                    } else {
                        BOOST_TEST(value > 8000.0);
                        BOOST_TEST(value < 12000.0);
                        const double kept = std::fmod(value * (1 - p), 10.0);  // 10 times the survivors
                        BOOST_TEST(std::min(kept, 10.0 - kept) < 1e-2);
                    }
                    const auto& h = result.h_n().value();
                    BOOST_TEST(h(0, 0, 0) == 10.0);
                    BOOST_TEST(h(1, 0, 0) == value);
                }
}

// test_RNN_cpu_vs_cudnn_with_dropout: with dropout 1 the two implementations agree exactly (the
// only dropout that is deterministic), here fused against generic, outputs and gradients.
BOOST_AUTO_TEST_CASE(test_RNN_cpu_vs_cudnn_with_dropout_fused_and_generic_agree_at_dropout_1) {
    for (const auto& cell : kCells) {
        std::vector<xt::xarray<double>> outputs, gradients;
        for (ExecutionPath path : kPaths) {
            auto rnn = rw::nn::make_recurrent<double>(
                cell, {.input_size = 5, .hidden_size = 4, .num_layers = 3, .dropout = 1.0, .path = path, .seed = 11});
            const auto result = rnn->forward(uniform_input({6, 3, 5}, 1));
            rw::sum(rw::mul(result.output, result.output)).backward();
            outputs.push_back(result.h_n().value());
            gradients.push_back(rnn->parameter("weight_hh_l0").grad().value());
        }
        BOOST_TEST(xt::allclose(outputs[0], outputs[1], 1e-12, 1e-14), cell);
        BOOST_TEST(xt::allclose(gradients[0], gradients[1], 1e-12, 1e-14), cell);
    }
}

// test_RNN_change_dropout: `rnn.dropout = p` on an existing layer is set_dropout(p). Two calls
// agree exactly when p is 0 or 1 or in eval mode, and differ otherwise; in eval mode every p
// gives the same output.
BOOST_AUTO_TEST_CASE(test_RNN_change_dropout_set_dropout_takes_effect_on_the_next_forward) {
    for (bool train : {true, false})
        for (ExecutionPath path : kPaths)
            BOOST_TEST_CONTEXT("train " << train << " " << path_name(path)) {
                auto rnn = rw::nn::make_rnn<double>({.input_size = 100, .hidden_size = 100, .num_layers = 2,
                                                     .dropout = 0.0, .path = path, .seed = 5},
                                                    rw::nn::Nonlinearity::relu);
                rnn->train(train);
                const Tensor<double> input = uniform_input({3, 2, 100}, 2);
                std::optional<xt::xarray<double>> previous;
                for (double p : {0.0, 0.5, 0.0, 0.7, 0.2, 1.0, 0.2, 0.0}) {
                    rnn->set_dropout(p);
                    BOOST_TEST(rnn->options().dropout == p);
                    const auto first = rnn->forward(input), second = rnn->forward(input);
                    const bool deterministic = p == 0.0 || p == 1.0 || !train;
                    BOOST_TEST(all_equal(first.output.value(), second.output.value()) == deterministic, "p " << p);
                    BOOST_TEST(all_equal(first.h_n().value(), second.h_n().value()) == deterministic, "p " << p);
                    if (previous) BOOST_TEST(all_equal(first.output.value(), *previous) == !train, "p " << p);
                    previous = first.output.value();
                }
            }
}

BOOST_AUTO_TEST_CASE(a_nan_or_out_of_range_dropout_is_refused_naming_the_option_expected_and_got) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const std::string message = refusal([&] { rw::nn::make_lstm<double>({.input_size = 2, .hidden_size = 3, .dropout = nan}); });
    BOOST_TEST(message.find("'dropout'") != std::string::npos, message);
    BOOST_TEST(message.find("expected a value in [0, 1], got nan") != std::string::npos, message);
    for (double p : {-0.1, 1.5, std::numeric_limits<double>::infinity()})
        BOOST_TEST(refusal([&] { rw::nn::make_gru<double>({.input_size = 2, .hidden_size = 3, .dropout = p}); })
                       .find("'dropout'") != std::string::npos);
    auto layer = rw::nn::make_lstm<double>({.input_size = 2, .hidden_size = 3, .num_layers = 2, .dropout = 0.25});
    BOOST_TEST(refusal([&] { layer->set_dropout(nan); }).find("got nan") != std::string::npos);
    BOOST_TEST(layer->options().dropout == 0.25);  // a refused change leaves the layer as it was
}

BOOST_AUTO_TEST_CASE(a_hidden_size_of_zero_is_refused_naming_hidden_size) {
    for (const auto& cell : kCells) {
        const std::string message = refusal([&] { rw::nn::make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 0}); });
        BOOST_TEST(message.find("'hidden_size'") != std::string::npos, cell << ": " << message);
        BOOST_TEST(message.find("got 0") != std::string::npos, cell << ": " << message);
    }
}

// test_rnn_args_check: an input of the wrong width or an initial state of the wrong batch is
// refused with an error that says what was expected and what came.
BOOST_AUTO_TEST_CASE(test_rnn_args_check_a_wrong_input_or_state_size_is_refused_with_expected_and_got) {
    for (ExecutionPath path : kPaths) {
        auto lstm = rw::nn::make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .path = path});
        BOOST_CHECK_EXCEPTION(lstm->forward(Tensor<double>::zeros({5, 2, 4})), rw::ShapeError, [](const auto& error) {
            return std::string(error.what()).find("input_size 3") != std::string::npos;
        });
        const Tensor<double> h0 = Tensor<double>::zeros({2, 3, 4}), c0 = Tensor<double>::zeros({2, 2, 4});
        BOOST_CHECK_EXCEPTION(lstm->forward(Tensor<double>::zeros({5, 2, 3}), {h0, c0}), rw::ShapeError, [](const auto& error) {
            return std::string(error.what()).find("expected [2, 2, 4], got [2, 3, 4]") != std::string::npos;
        });
    }
}

// test_variable_sequence (test_nn.py): a padded batch of unsorted lengths through a bidirectional
// two-layer layer equals each sequence run alone: its output rows, zeros past its end, its final
// states, and the weight gradients (the batch's summed loss is the sum of the sequences' losses).
BOOST_AUTO_TEST_CASE(test_variable_sequence_a_batch_of_unsorted_lengths_equals_each_sequence_run_alone) {
    const std::vector<std::int64_t> lengths{4, 6, 1, 5};
    const std::size_t T = 6, B = lengths.size(), I = 3, H = 4;
    for (const auto& cell : kCells)
        for (ExecutionPath path : kPaths)
            BOOST_TEST_CONTEXT(cell << " " << path_name(path)) {
                auto rnn = rw::nn::make_recurrent<double>(
                    cell, {.input_size = I, .hidden_size = H, .num_layers = 2, .bidirectional = true, .path = path, .seed = 5});
                const Tensor<double> x = uniform_input({T, B, I}, 11);
                const auto batch = rnn->forward(x, {}, lengths);
                BOOST_TEST(rnn->uses_fused() == (path == ExecutionPath::fused));
                rw::sum(batch.output).backward();
                std::vector<xt::xarray<double>> batch_grads;
                for (const auto& [name, parameter] : rnn->named_parameters()) batch_grads.push_back(parameter.grad().value());
                rnn->zero_grad();
                for (std::size_t b = 0; b < B; ++b) {
                    const std::size_t n = std::size_t(lengths[b]);
                    const Tensor<double> alone_x(xt::xarray<double>(xt::view(x.value(), xt::range(0, n), xt::range(b, b + 1), xt::all())));
                    const auto alone = rnn->forward(alone_x);
                    rw::sum(alone.output).backward();
                    const auto rows = xt::view(batch.output.value(), xt::all(), b, xt::all());
                    BOOST_TEST(xt::allclose(xt::view(rows, xt::range(0, n), xt::all()),
                                            xt::view(alone.output.value(), xt::all(), 0, xt::all()), 1e-12, 1e-14), "sequence " << b);
                    BOOST_TEST(all_equal(xt::view(rows, xt::range(n, T), xt::all()), xt::zeros<double>({T - n, 2 * H})));
                    BOOST_TEST(xt::allclose(xt::view(batch.h_n().value(), xt::all(), b, xt::all()),
                                            xt::view(alone.h_n().value(), xt::all(), 0, xt::all()), 1e-12, 1e-14), "sequence " << b);
                }
                std::size_t k = 0;
                for (const auto& [name, parameter] : rnn->named_parameters())
                    BOOST_TEST(xt::allclose(batch_grads[k++], parameter.grad().value(), 1e-11, 1e-13), name);
            }
}

BOOST_AUTO_TEST_SUITE_END()
