// Graphs of any length are freed without recursion (Note [Iterative teardown] in
// autograd/src/tensor.cpp): each case builds a long graph on a thread with a 256 KiB stack and
// frees it one way or another. Before the fix each of these overflowed that stack (a chain of
// ~2,000 ops was enough); the assertions check that the graph really was freed, not leaked:
// the leaves it used are held by nothing else afterwards.

#include <boost/test/unit_test.hpp>

#include <memory>
#include <stdexcept>
#include <vector>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "small_stack.hpp"

namespace {

using rw::Tensor;
using rw::test::run_on_small_stack;

// A tenth of the lengths under AddressSanitizer (scripts/check-sanitizers), where memory and time
// grow several times over; the old recursion overflowed 256 KiB at ~2,000 ops.
#ifdef __SANITIZE_ADDRESS__
constexpr std::size_t kChainOps = 100'000;
constexpr std::size_t kLstmSteps = 10'000;
#else
constexpr std::size_t kChainOps = 1'000'000;
constexpr std::size_t kLstmSteps = 100'000;
#endif

struct ChainFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// y = tanh(tanh(...tanh(x))): kChainOps nodes, each holding the previous one's output.
Tensor<double> tanh_chain(const Tensor<double>& x, std::size_t ops, std::size_t throw_at = 0) {
    Tensor<double> y = x;
    for (std::size_t i = 1; i <= ops; ++i) {
        if (i == throw_at) throw ChainFailure("thrown mid-forward");
        y = rw::tanh(y);
    }
    return y;
}

Tensor<double> leaf() { return Tensor<double>(xt::xarray<double>{0.5}, true); }

// A thin generic-path LSTM (one input, two hidden units, one sequence): ~20 nodes per step.
std::shared_ptr<rw::nn::Recurrent<double>> thin_lstm() {
    return rw::nn::make_lstm<double>({.input_size = 1, .hidden_size = 2, .path = rw::nn::ExecutionPath::generic});
}

// Not requiring a gradient: after a create_graph backward an input's .grad and the graph would hold
// each other (as in PyTorch), which only zero_grad() breaks.
Tensor<double> lstm_input() { return Tensor<double>(xt::xarray<double>::from_shape({kLstmSteps, 1, 1}) * 0 + 0.1); }

// How many handles share each parameter: back to the count before the forward once the graph
// that used them is gone.
std::vector<long> parameter_uses(const rw::nn::Recurrent<double>& lstm) {
    std::vector<long> uses;
    for (const auto& parameter : lstm.parameters()) uses.push_back(parameter.use_count());
    return uses;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(teardown)

BOOST_AUTO_TEST_CASE(a_million_op_chain_dropped_without_backward_is_freed_on_a_small_stack) {
    Tensor<double> x = leaf();
    run_on_small_stack([&] { tanh_chain(x, kChainOps); });
    BOOST_TEST(x.use_count() == 1);
}

BOOST_AUTO_TEST_CASE(a_million_op_chain_dropped_after_retain_graph_is_freed_on_a_small_stack) {
    Tensor<double> x = leaf();
    run_on_small_stack([&] {
        const Tensor<double> y = tanh_chain(x, kChainOps);
        y.backward(/*retain_graph=*/true);
    });
    BOOST_TEST(x.grad().defined());
    BOOST_TEST(x.use_count() == 1);
}

BOOST_AUTO_TEST_CASE(a_million_op_chain_and_its_create_graph_gradient_are_freed_on_a_small_stack) {
    Tensor<double> x = leaf();
    bool gradient_on_tape = false;
    run_on_small_stack([&] {
        const Tensor<double> y = tanh_chain(x, kChainOps);
        y.backward(/*retain_graph=*/false, /*create_graph=*/true);
        // x.grad is a million-op graph of its own, holding the forward graph's outputs.
        gradient_on_tape = x.grad().grad_fn() != nullptr;
        x.zero_grad();
    });
    BOOST_TEST(gradient_on_tape);
    BOOST_TEST(x.use_count() == 1);
}

BOOST_AUTO_TEST_CASE(a_million_op_chain_left_by_an_exception_mid_forward_is_freed_on_a_small_stack) {
    Tensor<double> x = leaf();
    BOOST_CHECK_THROW(run_on_small_stack([&] { tanh_chain(x, kChainOps, kChainOps); }), ChainFailure);
    BOOST_TEST(x.use_count() == 1);
}

BOOST_AUTO_TEST_CASE(a_hundred_thousand_step_generic_lstm_dropped_without_backward_is_freed_on_a_small_stack) {
    auto lstm = thin_lstm();
    const std::vector<long> before = parameter_uses(*lstm);
    run_on_small_stack([&] { lstm->forward(lstm_input()); });
    BOOST_TEST(!lstm->uses_fused());
    BOOST_TEST(parameter_uses(*lstm) == before, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_hundred_thousand_step_generic_lstm_dropped_after_retain_graph_is_freed_on_a_small_stack) {
    auto lstm = thin_lstm();
    const std::vector<long> before = parameter_uses(*lstm);
    run_on_small_stack([&] {
        const auto result = lstm->forward(lstm_input());
        rw::sum(result.output).backward(/*retain_graph=*/true);
    });
    BOOST_TEST(lstm->parameters()[0].grad().defined());
    BOOST_TEST(parameter_uses(*lstm) == before, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_hundred_thousand_step_generic_lstm_and_its_create_graph_gradients_are_freed_on_a_small_stack) {
    auto lstm = thin_lstm();
    const std::vector<long> before = parameter_uses(*lstm);
    bool gradient_on_tape = false;
    run_on_small_stack([&] {
        const auto result = lstm->forward(lstm_input());
        rw::sum(result.output).backward(/*retain_graph=*/false, /*create_graph=*/true);
        gradient_on_tape = lstm->parameters()[0].grad().grad_fn() != nullptr;
        for (auto parameter : lstm->parameters()) parameter.zero_grad();
    });
    BOOST_TEST(gradient_on_tape);
    BOOST_TEST(parameter_uses(*lstm) == before, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_hundred_thousand_step_generic_lstm_left_by_an_exception_mid_forward_is_freed_on_a_small_stack) {
    auto lstm = thin_lstm();
    const std::vector<long> before = parameter_uses(*lstm);
    // The probe sees every step's h; it fails on the last one, with the whole graph built.
    lstm->set_step_probe([](std::size_t, std::size_t, std::size_t step, const Tensor<double>& h) {
        if (step + 1 == kLstmSteps) throw ChainFailure("thrown at the last step");
        return h;
    });
    BOOST_CHECK_THROW(run_on_small_stack([&] { lstm->forward(lstm_input()); }), ChainFailure);
    BOOST_TEST(parameter_uses(*lstm) == before, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()
