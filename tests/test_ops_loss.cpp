// The tests of autograd/src/ops_loss.cpp: losses (every reduction, probability targets) and dropout.
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

BOOST_AUTO_TEST_SUITE(ops_loss)

BOOST_AUTO_TEST_CASE(cross_entropy_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return cross_entropy(x[0], {1, 0, 4, 4}); }, {input({4, 5}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_mask_gradient_matches_numeric) {
    // An xarray does not deduce T through the std::optional mask parameter, hence cross_entropy<double>.
    const Array mask{1.0, 0.0, 1.0, 1.0};
    expect_gradients_match([mask](const Inputs& x) { return cross_entropy<double>(x[0], {1, 0, 4, 4}, mask); },
                           {input({4, 5}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(mse_loss_gradient_matches_numeric_for_prediction_and_target) {
    expect_gradients_match([](const Inputs& x) { return mse_loss(x[0], x[1]); }, {input({3, 4}, 1), input({3, 4}, 2)});
}

BOOST_AUTO_TEST_CASE(cross_entropy_gradient_matches_numeric_for_every_reduction) {
    const Array mask{1.0, 0.0, 2.0, 0.5};
    for (const Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none})
        BOOST_TEST_CONTEXT("reduction " << int(reduction)) {
            expect_gradients_match(
                [&](const Inputs& x) { return weighted_sum({cross_entropy<double>(x[0], {1, 0, 4, 4}, mask, reduction)}); },
                {input({4, 5}, 1, -2.0, 2.0)});
        }
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_probability_targets_gradient_matches_numeric_for_logits_and_targets) {
    for (const Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none})
        BOOST_TEST_CONTEXT("reduction " << int(reduction)) {
            expect_gradients_match([&](const Inputs& x) { return weighted_sum({cross_entropy(x[0], softmax(x[1], 1), reduction)}); },
                                   {input({3, 5}, 1, -2.0, 2.0), input({3, 5}, 2)});
            expect_second_derivatives_match([&](const Inputs& x) { return weighted_sum({cross_entropy(x[0], softmax(x[1], 1), reduction)}); },
                                            {input({3, 5}, 1, -2.0, 2.0), input({3, 5}, 2)});
        }
}

BOOST_AUTO_TEST_CASE(mse_loss_gradient_matches_numeric_for_every_reduction) {
    for (const Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none})
        BOOST_TEST_CONTEXT("reduction " << int(reduction)) {
            expect_gradients_match([&](const Inputs& x) { return weighted_sum({mse_loss(x[0], x[1], reduction)}); },
                                   {input({3, 4}, 1), input({3, 4}, 2)});
        }
}

BOOST_AUTO_TEST_CASE(cross_entropy_reductions_are_the_sum_and_the_weighted_mean_of_the_per_row_losses) {
    const Tensor<double> logits = input({4, 5}, 3, -2.0, 2.0);
    const Array mask{1.0, 0.0, 2.0, 0.5};
    const std::vector<std::int64_t> targets{1, 0, 4, 4};
    const Array rows = cross_entropy<double>(logits, targets, mask, Reduction::none).value();
    BOOST_TEST(to_shape(rows.shape()) == Shape{4});
    BOOST_TEST(rows(1) == 0.0);  // a masked row
    const double total = rows(0) + rows(2) + rows(3);
    BOOST_TEST(cross_entropy<double>(logits, targets, mask, Reduction::sum).item() == total, tt::tolerance(1e-14));
    BOOST_TEST(cross_entropy<double>(logits, targets, mask).item() == total / 3.5, tt::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_one_hot_probabilities_equals_cross_entropy_with_class_indices) {
    const Tensor<double> logits = input({3, 4}, 4, -2.0, 2.0);
    const Array one_hot{{0, 1, 0, 0}, {0, 0, 0, 1}, {1, 0, 0, 0}};
    BOOST_TEST(cross_entropy(logits, Tensor<double>(one_hot)).item() == cross_entropy(logits, {1, 3, 0}).item(),
               tt::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(dropout_gradient_matches_numeric_in_training_with_a_fixed_seed) {
    // A fresh generator per evaluation: every evaluation of the function draws the same mask.
    expect_gradients_match(
        [](const Inputs& x) {
            Generator generator(42);
            return dropout(x[0], 0.3, true, generator);
        },
        {input({4, 5}, 1)});
}

BOOST_AUTO_TEST_CASE(cross_entropy_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return cross_entropy(x[0], {1, 0, 4, 4}); },
                                    {input({4, 5}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_mask_second_derivative_matches_numeric) {
    const Array mask{0.0, 1.0, 1.0, 1.0};
    expect_second_derivatives_match([mask](const Inputs& x) { return cross_entropy<double>(x[0], {1, 0, 4, 4}, mask); },
                                    {input({4, 5}, 1, -2.0, 2.0)});
}

BOOST_AUTO_TEST_CASE(mse_loss_second_derivative_matches_numeric) {
    expect_second_derivatives_match([](const Inputs& x) { return mse_loss(x[0], x[1]); }, {input({3, 4}, 1), input({3, 4}, 2)});
}

BOOST_AUTO_TEST_CASE(dropout_second_derivative_through_a_square_matches_numeric) {
    expect_second_derivatives_match(squared([](const Inputs& x) {
                                        Generator generator(7);
                                        return dropout(x[0], 0.5, true, generator);
                                    }),
                                    {input({4, 5}, 1)});
}

BOOST_AUTO_TEST_CASE(cross_entropy_matches_a_hand_computed_value) {
    // Row 0: -log(e^3 / (e + e^2 + e^3)) = log(1 + e^-1 + e^-2). Row 1: uniform over 3 classes, log 3.
    const Tensor<double> logits(Array{{1.0, 2.0, 3.0}, {1.0, 1.0, 1.0}});
    const double row0 = std::log(1 + std::exp(-1.0) + std::exp(-2.0)), row1 = std::log(3.0);
    BOOST_TEST(cross_entropy(logits, {2, 0}).item() == (row0 + row1) / 2, boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_a_mask_averages_over_the_unmasked_rows) {
    const Tensor<double> logits(Array{{1.0, 2.0, 3.0}, {1.0, 1.0, 1.0}, {5.0, 0.0, 0.0}});
    const double row0 = std::log(1 + std::exp(-1.0) + std::exp(-2.0)), row1 = std::log(3.0);
    BOOST_TEST(cross_entropy<double>(logits, {2, 0, 1}, Array{1.0, 1.0, 0.0}).item() == (row0 + row1) / 2,
               boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(cross_entropy_ignores_minus_infinity_logits_in_masked_rows) {
    const double inf = std::numeric_limits<double>::infinity();
    const Tensor<double> logits(Array{{1.0, 1.0, 1.0}, {-inf, 0.0, 0.0}}, true);
    const Tensor<double> loss = cross_entropy<double>(logits, {0, 0}, Array{1.0, 0.0});
    BOOST_TEST(loss.item() == std::log(3.0), boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(cross_entropy_gradient_is_softmax_minus_one_hot_over_rows) {
    Tensor<double> logits(Array{{1.0, 2.0, 3.0}, {0.5, -0.5, 0.0}}, true);
    cross_entropy(logits, {2, 0}).backward();
    const Array p = softmax(logits.detach(), 1).value();
    const Array one_hot{{0.0, 0.0, 1.0}, {1.0, 0.0, 0.0}};
    for (std::size_t i = 0; i < 2; ++i)
        for (std::size_t j = 0; j < 3; ++j)
            BOOST_TEST(logits.grad().value()(i, j) == (p(i, j) - one_hot(i, j)) / 2, boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(mse_loss_matches_a_hand_computed_value) {
    const Tensor<double> p(Array{1.0, 2.0, 4.0}), t(Array{0.0, 2.0, 1.0});
    BOOST_TEST(mse_loss(p, t).item() == (1.0 + 0.0 + 9.0) / 3, boost::test_tools::tolerance(1e-14));
}

BOOST_AUTO_TEST_CASE(dropout_is_the_identity_outside_training) {
    Generator generator(1);
    const Tensor<double> x = input({3, 4}, 1);
    BOOST_TEST(dropout(x, 0.5, false, generator).value() == x.value());
}

BOOST_AUTO_TEST_CASE(dropout_with_p_zero_is_the_identity) {
    Generator generator(1);
    const Tensor<double> x = input({3, 4}, 1);
    BOOST_TEST(dropout(x, 0.0, true, generator).value() == x.value());
}

BOOST_AUTO_TEST_CASE(dropout_zeroes_about_p_and_scales_survivors_by_one_over_one_minus_p) {
    Generator generator(3);
    const Tensor<double> ones = Tensor<double>::ones({100, 100});
    const Array y = dropout(ones, 0.25, true, generator).value();
    std::size_t zeros = 0;
    for (double v : y) {
        if (v == 0.0) ++zeros;
        else BOOST_TEST(v == 1 / 0.75, boost::test_tools::tolerance(1e-15));
    }
    BOOST_TEST(double(zeros) / double(y.size()) == 0.25, boost::test_tools::tolerance(0.1));
}

BOOST_AUTO_TEST_CASE(dropout_draws_the_same_mask_from_the_same_seed) {
    const Tensor<double> ones = Tensor<double>::ones({8, 8});
    Generator first(11), second(11);
    BOOST_TEST(dropout(ones, 0.5, true, first).value() == dropout(ones, 0.5, true, second).value());
}

BOOST_AUTO_TEST_CASE(dropout_gradient_is_its_mask) {
    Generator generator(5);
    Tensor<double> x = Tensor<double>::ones({6, 6}, true);
    const Tensor<double> y = dropout(x, 0.4, true, generator);
    sum(y).backward();
    BOOST_TEST(x.grad().value() == y.value());
}

BOOST_AUTO_TEST_CASE(cross_entropy_target_out_of_range_names_the_op_the_target_and_the_shape) {
    expect_error<std::invalid_argument>([] { cross_entropy(Tensor<double>::zeros({2, 3}), {0, 3}); },
                                        {"cross_entropy", "target 3", shape_string({2, 3})});
    expect_error<std::invalid_argument>([] { cross_entropy(Tensor<double>::zeros({2, 3}), {-1, 0}); },
                                        {"cross_entropy", "target -1", shape_string({2, 3})});
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_a_target_count_other_than_the_rows_names_both_counts) {
    expect_error<ShapeError>([] { cross_entropy(Tensor<double>::zeros({2, 3}), {0, 1, 2}); },
                             {"cross_entropy", "expected 2 targets (one per row of logits), got 3", shape_string({2, 3})});
}

BOOST_AUTO_TEST_CASE(cross_entropy_of_logits_that_are_not_2d_names_the_shape) {
    expect_error<ShapeError>([] { cross_entropy(Tensor<double>::zeros({2, 3, 4}), {0, 1}); },
                             {"cross_entropy", shape_string({2, 3, 4})});
}

BOOST_AUTO_TEST_CASE(cross_entropy_mask_of_the_wrong_shape_names_both_shapes) {
    expect_error<ShapeError>([] { cross_entropy<double>(Tensor<double>::zeros({2, 3}), {0, 1}, Array{1.0, 1.0, 1.0}); },
                             {"cross_entropy: the mask (one weight per row of logits) has the wrong shape: expected [2], got [3]"});
}

BOOST_AUTO_TEST_CASE(cross_entropy_mask_summing_to_zero_throws_invalid_argument) {
    expect_error<std::invalid_argument>([] { cross_entropy<double>(Tensor<double>::zeros({2, 3}), {0, 1}, Array{0.0, 0.0}); },
                                        {"cross_entropy", "mask"});
}

BOOST_AUTO_TEST_CASE(cross_entropy_mask_with_a_negative_weight_throws_invalid_argument) {
    expect_error<std::invalid_argument>([] { cross_entropy<double>(Tensor<double>::zeros({2, 3}), {0, 1}, Array{1.0, -1.0}); },
                                        {"cross_entropy", "mask"});
}

BOOST_AUTO_TEST_CASE(mse_loss_of_different_shapes_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { mse_loss(Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({3, 2})); },
                             {"mse_loss", shape_string({2, 3}), shape_string({3, 2})});
}

BOOST_AUTO_TEST_CASE(dropout_with_p_outside_zero_to_one_throws_invalid_argument) {
    for (double p : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
        BOOST_TEST_CONTEXT("p " << p) {
            Generator generator(1);
            expect_error<std::invalid_argument>([&] { dropout(Tensor<double>::ones({2}), p, true, generator); },
                                                {"dropout", "p"});
        }
    }
}

BOOST_AUTO_TEST_CASE(dropout_rejects_a_bad_p_outside_training_too) {
    Generator generator(1);
    for (double p : {1.5, -0.1, std::numeric_limits<double>::quiet_NaN()})
        BOOST_CHECK_THROW(dropout(Tensor<double>::ones({2}), p, false, generator), std::invalid_argument);
}

// torch.nn.functional.dropout(x, p=1): zeros, and the gradient is zero too; no random draws.
BOOST_AUTO_TEST_CASE(dropout_of_1_gives_zeros_and_a_zero_gradient_without_drawing) {
    Generator generator(1), untouched(1);
    const Tensor<double> x = Tensor<double>::full({3, 4}, 2.5, true);
    const Tensor<double> y = dropout(x, 1.0, true, generator);
    BOOST_TEST(xt::all(xt::equal(y.value(), 0.0)));
    sum(y).backward();
    BOOST_TEST(xt::all(xt::equal(x.grad().value(), 0.0)));
    BOOST_TEST(generator.uniform() == untouched.uniform());
}

BOOST_AUTO_TEST_SUITE_END()
