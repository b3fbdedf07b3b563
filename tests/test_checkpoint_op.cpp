// rw::checkpoint (autograd/recompute.hpp): recomputation records one op in place of a function's
// graph and gives the gradients of running the function directly.

#include <boost/test/unit_test.hpp>

#include <rewind/autograd.hpp>

#include "test_helpers.hpp"

using namespace rw;
using testing::random_tensor;

namespace {

// Two tanh layers through a weight the function reads directly (a "parameter").
struct TwoLayers {
    Tensor<double> weight;
    std::vector<Tensor<double>> operator()(const std::vector<Tensor<double>>& in) const {
        const Tensor<double> hidden = tanh(add(matmul(in[0], weight), in[1]));
        return {tanh(matmul(hidden, weight)), sum(hidden)};
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(checkpoint_op)

BOOST_AUTO_TEST_CASE(gives_the_gradients_of_the_function_run_directly) {
    Generator g(1);
    const TwoLayers f{random_tensor<double>({3, 3}, g, 0.8, true)};
    const Tensor<double> x = random_tensor<double>({2, 3}, g, 1.0, true);
    const Tensor<double> bias = random_tensor<double>({2, 3}, g, 1.0, true);
    const Tensor<double> seed = random_tensor<double>({2, 3}, g);

    auto direct = f({x, bias});
    const auto expected = grad<double>({direct[0], direct[1]}, {x, bias, f.weight}, {seed, Tensor<double>::scalar(0.5)});
    auto outputs = checkpoint<double>("two_layers", f, {x, bias}, {f.weight});
    const auto found = grad<double>({outputs[0], outputs[1]}, {x, bias, f.weight}, {seed, Tensor<double>::scalar(0.5)});
    for (std::size_t i = 0; i < 3; ++i) BOOST_TEST(testing::max_abs_difference(found[i].value(), expected[i].value()) == 0.0);
    BOOST_TEST(testing::max_abs_difference(outputs[0].value(), direct[0].value()) == 0.0);
}

BOOST_AUTO_TEST_CASE(records_one_op_and_none_of_the_function_s_steps) {
    Generator g(2);
    const TwoLayers f{random_tensor<double>({3, 3}, g, 0.8, true)};
    auto outputs = checkpoint<double>("two_layers", f, {random_tensor<double>({2, 3}, g, 1.0, true),
                                                        random_tensor<double>({2, 3}, g)}, {f.weight});
    BOOST_REQUIRE(outputs[0].grad_fn());
    BOOST_TEST(outputs[0].grad_fn()->name() == "checkpoint_two_layers");
    BOOST_TEST(outputs[0].grad_fn()->inputs().size() == 3u);
    for (const auto& input : outputs[0].grad_fn()->inputs()) BOOST_TEST(input.is_leaf());
}

BOOST_AUTO_TEST_CASE(passes_gradcheck_through_inputs_and_parameters) {
    Generator g(3);
    const Tensor<double> weight = random_tensor<double>({3, 3}, g, 0.8, true);
    const auto report = gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
            const TwoLayers f{in[2]};
            return checkpoint<double>("two_layers", f, {in[0], in[1]}, {in[2]})[0];
        },
        {random_tensor<double>({2, 3}, g, 1.0, true), random_tensor<double>({2, 3}, g, 1.0, true), weight}, {},
        {"x", "bias", "weight"});
    BOOST_TEST(report.passed, report.to_string());
}

BOOST_AUTO_TEST_CASE(refuses_a_parameter_that_is_not_a_leaf) {
    Generator g(4);
    const Tensor<double> scaled = mul(random_tensor<double>({3, 3}, g, 1.0, true), Tensor<double>::scalar(2.0));
    testing::expect_error<std::invalid_argument>(
        [&] { checkpoint<double>("f", TwoLayers{scaled}, {random_tensor<double>({2, 3}, g), random_tensor<double>({2, 3}, g)}, {scaled}); },
        {"checkpoint 'f'", "parameter 0 is not a leaf", "pass it among the inputs"});
}

BOOST_AUTO_TEST_CASE(refuses_double_backward_by_name) {
    Generator g(5);
    const TwoLayers f{random_tensor<double>({3, 3}, g, 0.8, true)};
    const Tensor<double> x = random_tensor<double>({2, 3}, g, 1.0, true);
    auto outputs = checkpoint<double>("two_layers", f, {x, random_tensor<double>({2, 3}, g)}, {f.weight});
    testing::expect_error<GraphError>(
        [&] { grad<double>({sum(outputs[0])}, {x}, {}, {.create_graph = true}); },
        {"checkpoint 'two_layers'", "create_graph"});
}

BOOST_AUTO_TEST_SUITE_END()
