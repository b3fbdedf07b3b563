// The tests of autograd/src/ops_nonlinear.cpp and ops_norm.cpp: each backward rule against
// central differences in float64 (gradcheck), second derivatives (gradgradcheck), PyTorch's
// conventions at kinks, ties and thresholds, and the errors for bad input. Values and gradients
// against PyTorch itself are in test_ops_torch.cpp.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>

#include <rewind/autograd.hpp>

#include "op_checks.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::op_checks;
using testing::expect_error;

BOOST_AUTO_TEST_SUITE(ops_nonlinear)

BOOST_AUTO_TEST_CASE(rsqrt_first_and_second_derivatives_match_numeric) {
    expect_gradients_match([](const Inputs& x) { return rsqrt(x[0]); }, {input({2, 3}, 1, 0.3, 2.0)});
    expect_second_derivatives_match([](const Inputs& x) { return rsqrt(x[0]); }, {input({2, 3}, 1, 0.3, 2.0)});
}

BOOST_AUTO_TEST_CASE(abs_gradient_matches_numeric_away_from_zero_and_is_zero_at_zero) {
    expect_gradients_match([](const Inputs& x) { return abs(x[0]); }, {input_away_from_zero({2, 3}, 1)});
    Tensor<double> x(Array{0.0, -2.0, 3.0}, true);
    sum(abs(x)).backward();
    BOOST_TEST(x.grad().value() == (Array{0.0, -1.0, 1.0}));
}

BOOST_AUTO_TEST_CASE(maximum_and_minimum_gradients_match_numeric_with_broadcasting) {
    // Columns of b far from a's values: no element sits near the kink a = b.
    const Inputs inputs = {input({3, 4}, 1, -1.0, 1.0), Tensor<double>(Array{{-3.0, 3.0, -3.0, 3.0}}, true)};
    expect_gradients_match([](const Inputs& x) { return maximum(x[0], x[1]); }, inputs);
    expect_gradients_match([](const Inputs& x) { return minimum(x[0], x[1]); }, inputs);
    expect_second_derivatives_match([](const Inputs& x) { return maximum(mul(x[0], x[0]), x[1]); }, inputs);
}

BOOST_AUTO_TEST_CASE(maximum_splits_the_gradient_of_a_tie_and_propagates_nan) {
    Tensor<double> a(Array{1.0, 2.0, 5.0}, true), b(Array{1.0, 3.0, 4.0}, true);
    sum(maximum(a, b)).backward();
    BOOST_TEST(a.grad().value() == (Array{0.5, 0.0, 1.0}));
    BOOST_TEST(b.grad().value() == (Array{0.5, 1.0, 0.0}));
    const double nan = std::numeric_limits<double>::quiet_NaN();
    BOOST_TEST(std::isnan(minimum(Tensor<double>(Array{nan}), Tensor<double>(Array{0.0})).value()(0)));
    BOOST_TEST(std::isnan(maximum(Tensor<double>(Array{0.0}), Tensor<double>(Array{nan})).value()(0)));
}

BOOST_AUTO_TEST_CASE(where_picks_by_the_condition_and_routes_the_gradient_with_broadcasting) {
    xt::xarray<bool> condition = xt::zeros<bool>({3, 1});
    condition(0, 0) = condition(2, 0) = true;
    expect_gradients_match([&](const Inputs& x) { return rw::where(condition, x[0], x[1]); }, {input({3, 4}, 1), input({4}, 2)});
    const Tensor<double> y = rw::where(condition, Tensor<double>(Array{{1.0, 2.0}}), Tensor<double>(Array{{-1.0, -2.0}}));
    BOOST_TEST(y.value() == (Array{{1.0, 2.0}, {-1.0, -2.0}, {1.0, 2.0}}));
    expect_error<ShapeError>([&] { rw::where(condition, Tensor<double>::zeros({2, 4}), Tensor<double>::zeros({4})); }, {"where"});
}

BOOST_AUTO_TEST_CASE(softplus_first_and_second_derivatives_match_numeric_on_both_sides_of_the_threshold) {
    // beta 2, threshold 1: elements in [-2, 2) fall on both sides of beta x = 1 (none near it).
    const Inputs inputs = {Tensor<double>(Array{-2.0, -0.7, 0.1, 0.3, 0.9, 1.7}, true)};
    expect_gradients_match([](const Inputs& x) { return softplus(x[0], 2.0, 1.0); }, inputs);
    expect_second_derivatives_match([](const Inputs& x) { return softplus(x[0], 2.0, 1.0); }, inputs);
    expect_gradients_match([](const Inputs& x) { return softplus(x[0]); }, {input({2, 3}, 1, -5.0, 5.0)});
}

BOOST_AUTO_TEST_CASE(softplus_is_the_input_itself_past_the_threshold_and_refuses_beta_zero) {
    const Tensor<double> y = softplus(Tensor<double>(Array{30.0, 5.0}));
    BOOST_TEST(y.value()(0) == 30.0);
    BOOST_TEST(y.value()(1) == std::log1p(std::exp(5.0)));
    expect_error<std::invalid_argument>([] { softplus(Tensor<double>(Array{1.0}), 0.0); }, {"softplus", "beta"});
}

BOOST_AUTO_TEST_CASE(log_sigmoid_derivatives_match_numeric_and_stay_finite_for_large_inputs) {
    expect_gradients_match([](const Inputs& x) { return log_sigmoid(x[0]); }, {input({2, 3}, 1, -6.0, 6.0)});
    expect_second_derivatives_match([](const Inputs& x) { return log_sigmoid(x[0]); }, {input({2, 3}, 1, -6.0, 6.0)});
    const Tensor<double> y = log_sigmoid(Tensor<double>(Array{-1000.0, 1000.0}));
    BOOST_TEST(y.value()(0) == -1000.0);
    BOOST_TEST(y.value()(1) == 0.0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(ops_norm)

BOOST_AUTO_TEST_CASE(var_gradients_match_numeric_for_axes_unbiased_and_keepdims) {
    expect_gradients_match([](const Inputs& x) { return var(x[0], {1}); }, {input({2, 3, 4}, 1)});
    expect_gradients_match([](const Inputs& x) { return var(x[0], {0, 2}, false, true); }, {input({2, 3, 4}, 1)});
    expect_gradients_match([](const Inputs& x) { return var(x[0]); }, {input({2, 3}, 1)});
    expect_second_derivatives_match([](const Inputs& x) { return var(x[0], {1}); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(var_divides_by_n_minus_one_when_unbiased_and_by_n_otherwise) {
    const Tensor<double> x(Array{1.0, 2.0, 3.0, 6.0});  // mean 3, squared deviations sum to 14
    BOOST_TEST(var(x).value()() == 14.0 / 3.0);
    BOOST_TEST(var(x, {0}, false).value()() == 14.0 / 4.0);
    BOOST_TEST(var(x, {}, true, true).value().shape()[0] == 1u);
    BOOST_TEST(std::isnan(var(Tensor<double>(Array{5.0})).value()()));  // N - 1 = 0, as PyTorch
}

BOOST_AUTO_TEST_CASE(var_names_the_op_for_a_bad_or_repeated_axis) {
    expect_error<ShapeError>([] { var(Tensor<double>::zeros({2, 3}), {2}); }, {"var", "axis 2 out of range"});
    expect_error<ShapeError>([] { var(Tensor<double>::zeros({2, 3}), {1, 1}); }, {"var", "twice"});
}

BOOST_AUTO_TEST_CASE(layer_norm_gradients_match_numeric_with_and_without_weight_and_bias) {
    const Inputs affine = {input({2, 3, 4}, 1, -2.0, 2.0), input({3, 4}, 2), input({3, 4}, 3)};
    expect_gradients_match([](const Inputs& x) { return layer_norm(x[0], {3, 4}, x[1], x[2]); }, affine);
    expect_gradients_match([](const Inputs& x) { return layer_norm(x[0], {4}); }, {input({2, 3, 4}, 1, -2.0, 2.0)});
    expect_gradients_match([](const Inputs& x) { return layer_norm(x[0], {4}, x[1], Tensor<double>(), 0.1); },
                           {input({3, 4}, 1, -2.0, 2.0), input({4}, 2)});
}

BOOST_AUTO_TEST_CASE(layer_norm_second_derivatives_match_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return layer_norm(x[0], {4}, x[1], x[2]); },
                                    {input({2, 4}, 1, -2.0, 2.0), input({4}, 2), input({4}, 3)});
}

BOOST_AUTO_TEST_CASE(layer_norm_output_has_zero_mean_and_unit_variance_per_row_without_affine) {
    const Tensor<double> y = layer_norm(input({3, 8}, 1, -5.0, 5.0), {8}, Tensor<double>(), Tensor<double>(), 0.0);
    const auto row_mean = mean(y, {1}).value();
    const auto row_var = var(y, {1}, false).value();
    for (std::size_t r = 0; r < 3; ++r) {
        BOOST_TEST(std::abs(row_mean(r)) < 1e-15);
        BOOST_TEST(row_var(r) == 1.0, boost::test_tools::tolerance(1e-13));
    }
}

BOOST_AUTO_TEST_CASE(layer_norm_names_the_op_for_mismatched_shapes) {
    const auto x = Tensor<double>::zeros({2, 3});
    expect_error<ShapeError>([&] { layer_norm(x, {2}); }, {"layer_norm", "normalized_shape"});
    expect_error<ShapeError>([&] { layer_norm(x, {3}, Tensor<double>::zeros({4})); }, {"layer_norm", "weight"});
    expect_error<ShapeError>([&] { layer_norm(x, {3}, Tensor<double>(), Tensor<double>::zeros({2})); }, {"layer_norm", "bias"});
    expect_error<std::invalid_argument>([&] { layer_norm(x, {3}, Tensor<double>(), Tensor<double>(), -1.0); }, {"layer_norm", "eps"});
}

BOOST_AUTO_TEST_CASE(float_layer_norm_agrees_with_double) {
    const Array value = random_array({4, 16}, 7, -3.0, 3.0);
    const auto single = layer_norm(Tensor<float>(xt::xarray<float>(value)), {16}).value();
    const auto twice = layer_norm(Tensor<double>(value), {16}).value();
    for (std::size_t i = 0; i < value.size(); ++i) BOOST_TEST(std::abs(single.data()[i] - twice.data()[i]) < 1e-5);
}

BOOST_AUTO_TEST_SUITE_END()
