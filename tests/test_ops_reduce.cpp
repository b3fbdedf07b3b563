// The tests of autograd/src/ops_reduce.cpp: reductions, the softmax family and argmax.
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

BOOST_AUTO_TEST_SUITE(ops_reduce)

BOOST_AUTO_TEST_CASE(sum_of_all_elements_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return sum(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(sum_over_axes_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return sum(x[0], {0, 2}); }, {input({2, 3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(sum_with_keepdims_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return sum(x[0], {1}, true); }, {input({2, 3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(mean_of_all_elements_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return mean(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(mean_over_axes_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return mean(x[0], {1}, true); }, {input({2, 3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(softmax_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return softmax(x[0], axis); }, {input({2, 3, 4}, 1, -2.0, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(log_softmax_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return log_softmax(x[0], axis); },
                                   {input({2, 3, 4}, 1, -2.0, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(argmax_picks_the_first_largest_element_along_the_axis_and_removes_it) {
    const Tensor<double> x(Array{{0.1, 0.9, 0.9}, {2.0, -1.0, 0.5}});
    BOOST_TEST(argmax(x, 1) == (xt::xarray<std::int64_t>{1, 0}));
    BOOST_TEST(argmax(x, 0) == (xt::xarray<std::int64_t>{1, 0, 0}));
    const Tensor<float> three(xt::xarray<float>{{{1, 5}, {7, 2}}, {{0, 9}, {3, 4}}});
    BOOST_TEST(argmax(three, 2) == (xt::xarray<std::int64_t>{{1, 0}, {1, 1}}));
    expect_error<ShapeError>([&] { argmax(x, 2); }, {"argmax", "axis 2 out of range"});
}

BOOST_AUTO_TEST_CASE(softmax_second_derivative_matches_numeric) {
    for (std::size_t axis : {0, 1}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_second_derivatives_match([axis](const Inputs& x) { return softmax(x[0], axis); },
                                            {input({3, 4}, 1, -2.0, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(log_softmax_second_derivative_matches_numeric) {
    for (std::size_t axis : {0, 1}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_second_derivatives_match([axis](const Inputs& x) { return log_softmax(x[0], axis); },
                                            {input({3, 4}, 1, -2.0, 2.0)});
        }
    }
}

BOOST_AUTO_TEST_CASE(softmax_of_1000_and_1001_is_finite_and_correct) {
    const Tensor<double> y = softmax(Tensor<double>(Array{1000.0, 1001.0}), 0);
    const double e = std::exp(1.0);
    BOOST_TEST(y.value()(0) == 1 / (1 + e), boost::test_tools::tolerance(1e-14));
    BOOST_TEST(y.value()(1) == e / (1 + e), boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(log_softmax_of_huge_logits_is_finite_and_correct) {
    // exp(-1e4) underflows to 0, so the exact answer is the logits shifted by their maximum.
    const Tensor<double> y = log_softmax(Tensor<double>(Array{1e4, 0.0, -1e4}), 0);
    BOOST_TEST(y.value()(0) == 0.0);
    BOOST_TEST(y.value()(1) == -1e4);
    BOOST_TEST(y.value()(2) == -2e4);
}

BOOST_AUTO_TEST_CASE(softmax_sums_to_one_along_its_axis_only) {
    const Tensor<double> y = softmax(input({2, 3, 4}, 1, -5.0, 5.0), 1);
    for (std::size_t i = 0; i < 2; ++i)
        for (std::size_t k = 0; k < 4; ++k) {
            double total = 0;
            for (std::size_t j = 0; j < 3; ++j) total += y.value()(i, j, k);
            BOOST_TEST(total == 1.0, boost::test_tools::tolerance(1e-14));
        }
}

BOOST_AUTO_TEST_CASE(softmax_over_a_missing_axis_names_the_op_and_the_shape) {
    expect_error<ShapeError>([] { softmax(Tensor<double>::zeros({2, 3}), 2); }, {"softmax", shape_string({2, 3})});
    expect_error<ShapeError>([] { log_softmax(Tensor<double>::zeros({2, 3}), 2); }, {"log_softmax", shape_string({2, 3})});
}

BOOST_AUTO_TEST_CASE(float_softmax_of_1000_and_1001_is_finite_and_correct) {
    const Tensor<float> y = softmax(Tensor<float>(xt::xarray<float>{1000.0f, 1001.0f}), 0);
    const double e = std::exp(1.0);
    BOOST_TEST(std::abs(y.value()(0) - 1 / (1 + e)) < 1e-6);
    BOOST_TEST(std::abs(y.value()(1) - e / (1 + e)) < 1e-6);
}



BOOST_AUTO_TEST_SUITE_END()
