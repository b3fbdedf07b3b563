// The tests of autograd/src/ops_elementwise.cpp: element-wise ops with broadcasting, and float against double.
// Each backward rule against central differences (gradcheck), second derivatives
// (gradgradcheck), hand-computed values, and the errors a user gets for bad input.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xio.hpp>
#include <xtensor/xmath.hpp>

#include <rewind/autograd.hpp>

#include "op_checks.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::op_checks;
using testing::expect_error;
using testing::max_abs_difference;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(ops_elementwise)

BOOST_AUTO_TEST_CASE(add_gradient_matches_numeric_for_every_broadcast_pattern) { check_binary_op(add<double>, false); }
BOOST_AUTO_TEST_CASE(sub_gradient_matches_numeric_for_every_broadcast_pattern) { check_binary_op(sub<double>, false); }
BOOST_AUTO_TEST_CASE(mul_gradient_matches_numeric_for_every_broadcast_pattern) { check_binary_op(mul<double>, false); }
BOOST_AUTO_TEST_CASE(div_gradient_matches_numeric_for_every_broadcast_pattern) {
    check_binary_op(rw::div<double>, false, 0.5, 2.0);
}

BOOST_AUTO_TEST_CASE(neg_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return neg(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(add_scalar_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return add_scalar(x[0], 1.5); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(mul_scalar_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return mul_scalar(x[0], -2.5); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(tanh_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return tanh(x[0]); }, {input({2, 3}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(sigmoid_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return sigmoid(x[0]); }, {input({2, 3}, 1, -3.0, 3.0)});
}

BOOST_AUTO_TEST_CASE(relu_gradient_matches_numeric_away_from_zero) {
    expect_gradients_match([](const Inputs& x) { return relu(x[0]); }, {input_away_from_zero({3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(exp_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return exp(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(log_gradient_matches_numeric_for_positive_inputs) {
    expect_gradients_match([](const Inputs& x) { return log(x[0]); }, {input({2, 3}, 1, 0.5, 2.0)});
}

BOOST_AUTO_TEST_CASE(sqrt_gradient_matches_numeric_for_positive_inputs) {
    expect_gradients_match([](const Inputs& x) { return sqrt(x[0]); }, {input({2, 3}, 1, 0.5, 2.0)});
}

BOOST_AUTO_TEST_CASE(pow_gradient_matches_numeric_for_fractional_and_integer_exponents) {
    for (double exponent : {2.5, 3.0, -1.5, 0.0}) {
        BOOST_TEST_CONTEXT("exponent " << exponent) {
            expect_gradients_match([exponent](const Inputs& x) { return pow(x[0], exponent); }, {input({2, 3}, 1, 0.5, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(clamp_gradient_matches_numeric_away_from_the_bounds) {
    // Elements at ±[0.2, 1) against bounds ±0.5: some clipped, some passed, none near a bound.
    Tensor<double> x(Array{{-0.9, -0.3, 0.25}, {0.7, 0.35, -0.75}}, true);
    expect_gradients_match([](const Inputs& xs) { return clamp(xs[0], -0.5, 0.5); }, {x});
}

BOOST_AUTO_TEST_CASE(tanh_backward_gradient_matches_numeric_for_both_inputs) {
    expect_gradients_match([](const Inputs& x) { return tanh_backward(x[0], x[1]); }, {input({2, 3}, 1), input({2, 3}, 2)});
}

BOOST_AUTO_TEST_CASE(sigmoid_backward_gradient_matches_numeric_for_both_inputs) {
    expect_gradients_match([](const Inputs& x) { return sigmoid_backward(x[0], x[1]); },
                           {input({2, 3}, 1), input({2, 3}, 2, 0.1, 0.9)});
}

BOOST_AUTO_TEST_CASE(mul_mask_gradient_matches_numeric) {
    const Array mask{{1.0, 0.0, 2.0}, {0.0, 1.0, 0.5}};
    expect_gradients_match([mask](const Inputs& x) { return mul_mask(x[0], mask); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(add_second_derivative_matches_numeric_for_every_broadcast_pattern) {
    for (const auto& [shape_a, shape_b] : broadcast_patterns) {
        BOOST_TEST_CONTEXT("shapes " << shape_string(shape_a) << " and " << shape_string(shape_b)) {
            expect_second_derivatives_match(squared([](const Inputs& x) { return add(x[0], x[1]); }),
                                            {input(shape_a, 1), input(shape_b, 2)});
        }
    }
}

BOOST_AUTO_TEST_CASE(sub_second_derivative_matches_numeric_for_every_broadcast_pattern) {
    for (const auto& [shape_a, shape_b] : broadcast_patterns) {
        BOOST_TEST_CONTEXT("shapes " << shape_string(shape_a) << " and " << shape_string(shape_b)) {
            expect_second_derivatives_match(squared([](const Inputs& x) { return sub(x[0], x[1]); }),
                                            {input(shape_a, 1), input(shape_b, 2)});
        }
    }
}

BOOST_AUTO_TEST_CASE(mul_second_derivative_matches_numeric_for_every_broadcast_pattern) {
    check_binary_op(mul<double>, true);
}

BOOST_AUTO_TEST_CASE(div_second_derivative_matches_numeric_for_every_broadcast_pattern) {
    check_binary_op(rw::div<double>, true, 0.5, 2.0);
}

BOOST_AUTO_TEST_CASE(neg_and_scalar_ops_second_derivative_matches_numeric) {
    expect_second_derivatives_match(squared([](const Inputs& x) { return mul_scalar(add_scalar(neg(x[0]), 0.5), 3.0); }),
                                    {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(tanh_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return tanh(x[0]); }, {input({2, 3}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(sigmoid_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return sigmoid(x[0]); }, {input({2, 3}, 1, -3.0, 3.0)});
}

BOOST_AUTO_TEST_CASE(exp_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return exp(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(log_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return log(x[0]); }, {input({2, 3}, 1, 0.5, 2.0)});
}

BOOST_AUTO_TEST_CASE(sqrt_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return sqrt(x[0]); }, {input({2, 3}, 1, 0.5, 2.0)});
}

BOOST_AUTO_TEST_CASE(pow_second_derivative_matches_numeric) {
    for (double exponent : {2.5, 3.0, -1.5}) {
        BOOST_TEST_CONTEXT("exponent " << exponent) {
            expect_second_derivatives_match([exponent](const Inputs& x) { return pow(x[0], exponent); },
                                            {input({2, 3}, 1, 0.5, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(relu_and_clamp_second_derivative_through_a_square_matches_numeric) {
    expect_second_derivatives_match(squared([](const Inputs& x) { return clamp(relu(x[0]), -0.5, 0.5); }),
                                    {Tensor<double>(Array{{-0.9, -0.3, 0.25}, {0.7, 0.35, -0.75}}, true)});
}

BOOST_AUTO_TEST_CASE(tanh_backward_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return tanh_backward(x[0], x[1]); },
                                    {input({2, 3}, 1), input({2, 3}, 2)});
}

BOOST_AUTO_TEST_CASE(sigmoid_backward_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return sigmoid_backward(x[0], x[1]); },
                                    {input({2, 3}, 1), input({2, 3}, 2, 0.1, 0.9)});
}

BOOST_AUTO_TEST_CASE(mul_mask_second_derivative_through_a_square_matches_numeric) {
    const Array mask{{1.0, 0.0, 2.0}, {0.0, 1.0, 0.5}};
    expect_second_derivatives_match(squared([mask](const Inputs& x) { return mul_mask(x[0], mask); }), {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(shape_error_is_catchable_as_invalid_argument) {
    BOOST_CHECK_THROW(add(Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({4, 3})), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(add_of_shapes_that_do_not_broadcast_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { add(Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({4, 3})); },
                             {"add", shape_string({2, 3}), shape_string({4, 3})});
}

BOOST_AUTO_TEST_CASE(mul_of_shapes_that_do_not_broadcast_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { mul(Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({2})); },
                             {"mul", shape_string({2, 3}), shape_string({2})});
}

BOOST_AUTO_TEST_CASE(float_forward_values_match_double_within_1e_5) {
    const Array x = random_array({3, 4}, 1, -2.0, 2.0), w = random_array({4, 5}, 2, -1.0, 1.0);
    const Tensor<double> xd(x), wd(w);
    const Tensor<float> xf(xt::xarray<float>(xt::cast<float>(x))), wf(xt::xarray<float>(xt::cast<float>(w)));
    BOOST_TEST(max_abs_difference(softmax(xf, 1).value(), softmax(xd, 1).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(log_softmax(xf, 0).value(), log_softmax(xd, 0).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(tanh(xf).value(), tanh(xd).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(sigmoid(xf).value(), sigmoid(xd).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(matmul(xf, wf).value(), matmul(xd, wd).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(concat<float>({slice(xf, 1, 0, 1), xf}, 1).value(),
                              concat<double>({slice(xd, 1, 0, 1), xd}, 1).value()) < 1e-5);
    BOOST_TEST(max_abs_difference(cross_entropy(xf, {0, 3, 1}).value(), cross_entropy(xd, {0, 3, 1}).value()) < 1e-5);
}

BOOST_AUTO_TEST_CASE(float_gradients_match_double_within_1e_5) {
    const Array x = random_array({3, 4}, 1, -2.0, 2.0), w = random_array({4, 5}, 2, -1.0, 1.0);
    Tensor<double> xd(x, true), wd(w, true);
    Tensor<float> xf(xt::xarray<float>(xt::cast<float>(x)), true), wf(xt::xarray<float>(xt::cast<float>(w)), true);
    cross_entropy(tanh(matmul(xd, wd)), {0, 4, 2}).backward();
    cross_entropy(tanh(matmul(xf, wf)), {0, 4, 2}).backward();
    BOOST_TEST(max_abs_difference(xf.grad().value(), xd.grad().value()) < 1e-5);
    BOOST_TEST(max_abs_difference(wf.grad().value(), wd.grad().value()) < 1e-5);
}

BOOST_AUTO_TEST_SUITE_END()
