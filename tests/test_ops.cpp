// The ops of ops.hpp: every backward rule against central differences (gradcheck), second
// derivatives against differences of the first (gradgradcheck), a few hand-computed values,
// and the errors a user gets for bad shapes, indices, targets and probabilities.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xio.hpp>
#include <xtensor/xmath.hpp>

#include <rewind/autograd.hpp>

#include "test_helpers.hpp"

using namespace rw;
using Array = xt::xarray<double>;
using Inputs = std::vector<Tensor<double>>;
using testing::expect_error;
namespace tt = boost::test_tools;
using testing::max_abs_difference;

namespace {

Array random_array(const Shape& shape, std::uint64_t seed, double low, double high) {
    std::mt19937_64 engine(seed);
    std::uniform_real_distribution<double> uniform(low, high);
    Array value = Array::from_shape(shape);
    for (std::size_t i = 0; i < value.size(); ++i) value.data()[i] = uniform(engine);
    return value;
}

// An input that requires a gradient, uniform in [low, high).
Tensor<double> input(const Shape& shape, std::uint64_t seed, double low = -1.0, double high = 1.0) {
    return Tensor<double>(random_array(shape, seed, low, high), true);
}

// An input whose elements lie in ±[0.2, 1): for ops with a kink at 0, where central
// differences would straddle the kink.
Tensor<double> input_away_from_zero(const Shape& shape, std::uint64_t seed) {
    Array value = random_array(shape, seed, 0.2, 1.0);
    const Array sign = random_array(shape, seed + 1000, -1.0, 1.0);
    for (std::size_t i = 0; i < value.size(); ++i)
        if (sign.data()[i] < 0) value.data()[i] = -value.data()[i];
    return Tensor<double>(std::move(value), true);
}

// A fixed tensor that takes no gradient.
Tensor<double> constant(const Shape& shape, std::uint64_t seed) {
    return Tensor<double>(random_array(shape, seed, -1.0, 1.0));
}

// Differentiating <f, r> for a random r only ever sees the op through one projection; multi-output
// ops are reduced the same way, each output against its own fixed weights.
Tensor<double> weighted_sum(const std::vector<Tensor<double>>& parts) {
    Tensor<double> total = Tensor<double>::scalar(0.0);
    for (std::size_t i = 0; i < parts.size(); ++i) total = add(total, sum(mul(parts[i], constant(parts[i].shape(), 500 + i))));
    return total;
}

// A linear op has a zero second derivative, so its double backward is only exercised once a
// nonlinearity follows it: the square of its output.
CheckedFunction squared(CheckedFunction function) {
    return [function](const Inputs& xs) {
        const Tensor<double> y = function(xs);
        return mul(y, y);
    };
}

void expect_gradients_match(const CheckedFunction& function, const Inputs& inputs) {
    const GradcheckReport report = gradcheck(function, inputs);
    BOOST_CHECK_MESSAGE(report.passed, report.to_string());
}

void expect_second_derivatives_match(const CheckedFunction& function, const Inputs& inputs) {
    const GradcheckReport report = gradgradcheck(function, inputs);
    BOOST_CHECK_MESSAGE(report.passed, report.to_string());
}

using BinaryOp = Tensor<double> (*)(const Tensor<double>&, const Tensor<double>&);

// Equal shapes, a column against a row, a trailing vector, and a 0-d operand on either side.
const std::vector<std::pair<Shape, Shape>> broadcast_patterns = {
    {{2, 3}, {2, 3}}, {{3, 1}, {1, 4}}, {{2, 3, 4}, {4}}, {{}, {2, 3}}, {{2, 3}, {}}};

// The second operand is drawn from [low_b, high_b) so that div stays away from zero.
void check_binary_op(BinaryOp op, bool second_derivative, double low_b = -1.0, double high_b = 1.0) {
    for (const auto& [shape_a, shape_b] : broadcast_patterns) {
        BOOST_TEST_CONTEXT("shapes " << shape_string(shape_a) << " and " << shape_string(shape_b)) {
            const Inputs inputs = {input(shape_a, 1), input(shape_b, 2, low_b, high_b)};
            const CheckedFunction function = [op](const Inputs& x) { return op(x[0], x[1]); };
            if (second_derivative) expect_second_derivatives_match(function, inputs);
            else expect_gradients_match(function, inputs);
        }
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops)

// ---------------------------------------------------------------- element-wise: gradients

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

// ---------------------------------------------------------------- products and layout: gradients

BOOST_AUTO_TEST_CASE(matmul_gradient_matches_numeric_for_2d_operands) {
    expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {input({2, 3}, 1), input({3, 4}, 2)});
}

BOOST_AUTO_TEST_CASE(matmul_gradient_matches_numeric_for_3d_times_2d) {
    expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {input({2, 3, 4}, 1), input({4, 5}, 2)});
}

BOOST_AUTO_TEST_CASE(gemm_gradient_matches_numeric_for_every_transpose_combination) {
    for (bool transpose_a : {false, true})
        for (bool transpose_b : {false, true}) {
            BOOST_TEST_CONTEXT("transpose_a " << transpose_a << ", transpose_b " << transpose_b) {
                // op(A) is [2, 3] and op(B) is [3, 4] in every combination.
                const Shape shape_a = transpose_a ? Shape{3, 2} : Shape{2, 3};
                const Shape shape_b = transpose_b ? Shape{4, 3} : Shape{3, 4};
                expect_gradients_match(
                    [=](const Inputs& x) { return gemm(x[0], x[1], transpose_a, transpose_b); },
                    {input(shape_a, 1), input(shape_b, 2)});
            }
        }
}

BOOST_AUTO_TEST_CASE(transpose_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return transpose(x[0]); }, {input({2, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(permute_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return permute(x[0], {2, 0, 1}); }, {input({2, 3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(reshape_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return reshape(x[0], {4, 6}); }, {input({2, 3, 4}, 1)});
}

BOOST_AUTO_TEST_CASE(slice_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return slice(x[0], axis, 1, 3); }, {input({4, 3, 5}, 1)});
        }
    }
}

BOOST_AUTO_TEST_CASE(concat_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            Shape a{2, 3, 4}, b{2, 3, 4}, c{2, 3, 4};
            a[axis] = 1;
            c[axis] = 2;
            expect_gradients_match([axis](const Inputs& x) { return concat(x, axis); },
                                   {input(a, 1), input(b, 2), input(c, 3)});
        }
    }
}

BOOST_AUTO_TEST_CASE(stack_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return stack(x, axis); },
                                   {input({2, 3}, 1), input({2, 3}, 2), input({2, 3}, 3)});
        }
    }
}

BOOST_AUTO_TEST_CASE(unstack_gradient_matches_numeric_on_every_axis) {
    for (std::size_t axis : {0, 1, 2}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return weighted_sum(unstack(x[0], axis)); },
                                   {input({2, 3, 4}, 1)});
        }
    }
}

BOOST_AUTO_TEST_CASE(unstack_gradient_matches_numeric_when_only_one_part_is_used) {
    expect_gradients_match([](const Inputs& x) { return unstack(x[0], 1)[2]; }, {input({2, 4, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(split_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return weighted_sum(split(x[0], {2, 4, 1}, 1)); }, {input({3, 7}, 1)});
}

BOOST_AUTO_TEST_CASE(split_gradient_matches_numeric_when_only_one_piece_is_used) {
    expect_gradients_match([](const Inputs& x) { return split(x[0], {1, 2, 1}, 0)[1]; }, {input({4, 3}, 1)});
}

BOOST_AUTO_TEST_CASE(chunk_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return weighted_sum(chunk(x[0], 3, 0)); }, {input({7, 2}, 1)});
}

BOOST_AUTO_TEST_CASE(index_select_gradient_matches_numeric_with_repeated_indices) {
    for (std::size_t axis : {0, 1}) {
        BOOST_TEST_CONTEXT("axis " << axis) {
            expect_gradients_match([axis](const Inputs& x) { return index_select(x[0], axis, {2, 0, 2, 3, 2}); },
                                   {input({4, 4}, 1)});
        }
    }
}

BOOST_AUTO_TEST_CASE(broadcast_to_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return broadcast_to(x[0], {2, 3, 4}); }, {input({3, 1}, 1)});
}

BOOST_AUTO_TEST_CASE(sum_to_gradient_matches_numeric) {
    expect_gradients_match([](const Inputs& x) { return sum_to(x[0], {3, 1}); }, {input({2, 3, 4}, 1)});
}

// ---------------------------------------------------------------- reductions and losses: gradients

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

BOOST_AUTO_TEST_CASE(squeeze_and_unsqueeze_gradients_match_numeric_on_every_axis) {
    for (std::size_t axis = 0; axis < 3; ++axis)
        BOOST_TEST_CONTEXT("axis " << axis) {
            Shape shape{2, 3, 4};
            shape[axis] = 1;
            expect_gradients_match([axis](const Inputs& x) { return squeeze(x[0], axis); }, {input(shape, 1)});
            expect_second_derivatives_match(squared([axis](const Inputs& x) { return squeeze(x[0], axis); }), {input(shape, 1)});
            expect_gradients_match([axis](const Inputs& x) { return unsqueeze(x[0], axis); }, {input({2, 3}, 2)});
            expect_second_derivatives_match(squared([axis](const Inputs& x) { return unsqueeze(x[0], axis); }),
                                            {input({2, 3}, 2)});
        }
}

BOOST_AUTO_TEST_CASE(squeeze_removes_and_unsqueeze_inserts_one_axis_of_extent_one) {
    const Tensor<double> x = input({2, 1, 3}, 5);
    BOOST_TEST(squeeze(x, 1).shape() == (Shape{2, 3}));
    BOOST_TEST(unsqueeze(x, 3).shape() == (Shape{2, 1, 3, 1}));
    BOOST_TEST(unsqueeze(x, 0).shape() == (Shape{1, 2, 1, 3}));
    BOOST_TEST(squeeze(x, 1).grad_fn()->name == "squeeze");
}

BOOST_AUTO_TEST_CASE(squeeze_of_an_axis_longer_than_one_and_unsqueeze_past_the_end_name_the_op) {
    expect_error<ShapeError>([] { squeeze(Tensor<double>::zeros({2, 3}), 1); }, {"squeeze", "axis 1 has extent 3, expected 1"});
    expect_error<ShapeError>([] { unsqueeze(Tensor<double>::zeros({2, 3}), 3); }, {"unsqueeze", "axis 3 out of range 0..2"});
}

BOOST_AUTO_TEST_CASE(argmax_picks_the_first_largest_element_along_the_axis_and_removes_it) {
    const Tensor<double> x(Array{{0.1, 0.9, 0.9}, {2.0, -1.0, 0.5}});
    BOOST_TEST(argmax(x, 1) == (xt::xarray<std::int64_t>{1, 0}));
    BOOST_TEST(argmax(x, 0) == (xt::xarray<std::int64_t>{1, 0, 0}));
    const Tensor<float> three(xt::xarray<float>{{{1, 5}, {7, 2}}, {{0, 9}, {3, 4}}});
    BOOST_TEST(argmax(three, 2) == (xt::xarray<std::int64_t>{{1, 0}, {1, 1}}));
    expect_error<ShapeError>([&] { argmax(x, 2); }, {"argmax", "axis 2 out of range"});
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

// ---------------------------------------------------------------- second derivatives

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

BOOST_AUTO_TEST_CASE(matmul_second_derivative_matches_numeric_for_2d_operands) {
    expect_second_derivatives_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {input({2, 3}, 1), input({3, 4}, 2)});
}

BOOST_AUTO_TEST_CASE(matmul_second_derivative_matches_numeric_for_3d_times_2d) {
    expect_second_derivatives_match([](const Inputs& x) { return matmul(x[0], x[1]); },
                                    {input({2, 3, 4}, 1), input({4, 5}, 2)});
}

// A 3-D operand is the matrix [product of the leading axes, last axis]: op(A) is [6, 4] and op(B)
// [4, 5] in every combination, with A [2, 3, 4] or [2, 2, 6] and B spread over three axes too.
static std::pair<Shape, Shape> three_axis_operands(bool transpose_a, bool transpose_b) {
    return {transpose_a ? Shape{2, 2, 6} : Shape{2, 3, 4}, transpose_b ? Shape{5, 1, 4} : Shape{2, 2, 5}};
}

// The packed entry of the GEMM layer against plain gemm(): sizes that are not multiples of any
// block, B transposed or not, beta 0 and 1, strided A and C, packed (many uses) or not.
template <class T>
void check_packed_gemm(double tolerance) {
    Generator generator(3);
    auto random = [&](std::size_t size) {
        std::vector<T> values(size);
        for (auto& v : values) v = T(generator.uniform(-1, 1));
        return values;
    };
    const std::int64_t m = 5, n = 37, k = 19, lda = k + 3, ldc = n + 2;
    for (const bool transpose_b : {false, true})
        for (const T beta : {T(0), T(1)})
            for (const std::int64_t uses : {std::int64_t(1), std::int64_t(100)}) {
                const std::int64_t ldb = (transpose_b ? k : n) + 1;
                const auto b = random(std::size_t((transpose_b ? n : k) * ldb));
                const rw::blas::PackedGemm<T> packed(transpose_b, m, n, k, b.data(), ldb, beta, lda, ldc, uses);
                for (int call = 0; call < 3; ++call) {
                    const auto a = random(std::size_t(m * lda));
                    auto expected = random(std::size_t(m * ldc));
                    auto actual = expected;
                    rw::blas::gemm(false, transpose_b, m, n, k, T(1), a.data(), lda, b.data(), ldb, beta, expected.data(), ldc);
                    packed(a.data(), actual.data());
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t j = 0; j < ldc; ++j) {
                            const std::size_t at = std::size_t(i * ldc + j);
                            // Padding columns past n must be left alone.
                            BOOST_TEST(std::abs(double(actual[at] - expected[at])) <= tolerance,
                                       "transpose_b " << transpose_b << " beta " << beta << " uses " << uses
                                                      << " at " << i << "," << j);
                        }
                }
            }
}

BOOST_AUTO_TEST_CASE(packed_gemm_equals_gemm_in_float_and_double) {
    check_packed_gemm<float>(1e-5);
    check_packed_gemm<double>(0.0);  // double is the same cblas_dgemm call
}

BOOST_AUTO_TEST_CASE(gemm_of_operands_with_more_than_two_axes_multiplies_them_as_matrices) {
    const Tensor<double> a(random_array({2, 3, 4}, 1, -1.0, 1.0)), b(random_array({5, 4}, 2, -1.0, 1.0));
    const Tensor<double> product = gemm(a, b, false, true);
    BOOST_TEST(product.shape() == (Shape{2, 3, 5}));
    BOOST_TEST(xt::allclose(product.value(), reshape(gemm(reshape(a, {6, 4}), b, false, true), {2, 3, 5}).value()));
    BOOST_TEST(gemm(a, a, true, false).shape() == (Shape{4, 4}));
}

BOOST_AUTO_TEST_CASE(gemm_gradient_matches_numeric_for_operands_with_more_than_two_axes) {
    for (bool transpose_a : {false, true})
        for (bool transpose_b : {false, true}) {
            BOOST_TEST_CONTEXT("transpose_a " << transpose_a << ", transpose_b " << transpose_b) {
                const auto [shape_a, shape_b] = three_axis_operands(transpose_a, transpose_b);
                expect_gradients_match([=](const Inputs& x) { return gemm(x[0], x[1], transpose_a, transpose_b); },
                                       {input(shape_a, 1), input(shape_b, 2)});
            }
        }
}

BOOST_AUTO_TEST_CASE(gemm_second_derivative_matches_numeric_for_operands_with_more_than_two_axes) {
    for (bool transpose_a : {false, true})
        for (bool transpose_b : {false, true}) {
            BOOST_TEST_CONTEXT("transpose_a " << transpose_a << ", transpose_b " << transpose_b) {
                const auto [shape_a, shape_b] = three_axis_operands(transpose_a, transpose_b);
                expect_second_derivatives_match(
                    [=](const Inputs& x) { return gemm(x[0], x[1], transpose_a, transpose_b); },
                    {input(shape_a, 1), input(shape_b, 2)});
            }
        }
}

BOOST_AUTO_TEST_CASE(gemm_second_derivative_matches_numeric_for_every_transpose_combination) {
    for (bool transpose_a : {false, true})
        for (bool transpose_b : {false, true}) {
            BOOST_TEST_CONTEXT("transpose_a " << transpose_a << ", transpose_b " << transpose_b) {
                const Shape shape_a = transpose_a ? Shape{3, 2} : Shape{2, 3};
                const Shape shape_b = transpose_b ? Shape{4, 3} : Shape{3, 4};
                expect_second_derivatives_match(
                    [=](const Inputs& x) { return gemm(x[0], x[1], transpose_a, transpose_b); },
                    {input(shape_a, 1), input(shape_b, 2)});
            }
        }
}

BOOST_AUTO_TEST_CASE(layout_ops_second_derivative_through_a_square_matches_numeric) {
    const std::vector<std::pair<std::string, CheckedFunction>> cases = {
        {"transpose", [](const Inputs& x) { return transpose(reshape(x[0], {6, 4})); }},
        {"permute", [](const Inputs& x) { return permute(x[0], {2, 0, 1}); }},
        {"reshape", [](const Inputs& x) { return reshape(x[0], {4, 6}); }},
        {"slice", [](const Inputs& x) { return slice(x[0], 1, 1, 3); }},
        {"concat", [](const Inputs& x) { return concat<double>({x[0], slice(x[0], 2, 0, 1)}, 2); }},
        {"stack", [](const Inputs& x) { return stack<double>({x[0], mul_scalar(x[0], 2.0)}, 1); }},
        {"split", [](const Inputs& x) { return split(x[0], {1, 3}, 2)[1]; }},
        {"unstack", [](const Inputs& x) { return unstack(x[0], 1)[2]; }},
        {"chunk", [](const Inputs& x) { return chunk(x[0], 2, 1)[1]; }},
        {"index_select", [](const Inputs& x) { return index_select(x[0], 1, {2, 0, 2}); }},
        {"broadcast_to", [](const Inputs& x) { return broadcast_to(x[0], {3, 2, 3, 4}); }},
        {"sum_to", [](const Inputs& x) { return sum_to(x[0], {3, 1}); }},
        {"sum", [](const Inputs& x) { return sum(x[0], {0, 2}, true); }},
        {"mean", [](const Inputs& x) { return mean(x[0], {1}); }},
    };
    for (const auto& [name, function] : cases) {
        BOOST_TEST_CONTEXT(name) { expect_second_derivatives_match(squared(function), {input({2, 3, 4}, 1)}); }
    }
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

// ---------------------------------------------------------------- known values

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

BOOST_AUTO_TEST_CASE(index_select_picks_rows_in_index_order) {
    const Tensor<double> table(Array{{0.0, 1.0}, {10.0, 11.0}, {20.0, 21.0}});
    const Tensor<double> rows = index_select(table, 0, {2, 0, 2});
    BOOST_TEST(rows.value() == (Array{{20.0, 21.0}, {0.0, 1.0}, {20.0, 21.0}}));
}

BOOST_AUTO_TEST_CASE(index_select_with_repeated_indices_accumulates_gradient) {
    Tensor<double> table(Array{{0.0, 1.0}, {10.0, 11.0}, {20.0, 21.0}}, true);
    sum(index_select(table, 0, {1, 1, 0})).backward();
    BOOST_TEST(table.grad().value() == (Array{{1.0, 1.0}, {2.0, 2.0}, {0.0, 0.0}}));
}

BOOST_AUTO_TEST_CASE(slice_of_a_time_major_sequence_picks_one_step) {
    // [T=3, B=2, I=2] with element (t, b, i) = 100 t + 10 b + i.
    Array sequence = Array::from_shape({3, 2, 2});
    for (std::size_t t = 0; t < 3; ++t)
        for (std::size_t b = 0; b < 2; ++b)
            for (std::size_t i = 0; i < 2; ++i) sequence(t, b, i) = 100.0 * t + 10.0 * b + i;
    const Tensor<double> step = slice(Tensor<double>(sequence), 0, 1, 2);
    BOOST_TEST(step.shape() == (Shape{1, 2, 2}), boost::test_tools::per_element());
    BOOST_TEST(step.value() == (Array{{{100.0, 101.0}, {110.0, 111.0}}}));
}

BOOST_AUTO_TEST_CASE(slice_gradient_is_zero_outside_the_slice) {
    Tensor<double> x(Array{{1.0, 2.0, 3.0, 4.0}, {5.0, 6.0, 7.0, 8.0}}, true);
    sum(slice(x, 1, 1, 3)).backward();
    BOOST_TEST(x.grad().value() == (Array{{0.0, 1.0, 1.0, 0.0}, {0.0, 1.0, 1.0, 0.0}}));
}

BOOST_AUTO_TEST_CASE(concat_joins_parts_along_the_axis) {
    Array column{1.0, 2.0};
    column.reshape({2, 1});
    const Tensor<double> a(column), b(Array{{3.0, 4.0}, {5.0, 6.0}});
    BOOST_TEST(concat<double>({a, b}, 1).value() == (Array{{1.0, 3.0, 4.0}, {2.0, 5.0, 6.0}}));
}

BOOST_AUTO_TEST_CASE(stack_inserts_a_new_axis) {
    const Tensor<double> a(Array{1.0, 2.0}), b(Array{3.0, 4.0});
    BOOST_TEST(stack<double>({a, b}, 0).value() == (Array{{1.0, 2.0}, {3.0, 4.0}}));
    BOOST_TEST(stack<double>({a, b}, 1).value() == (Array{{1.0, 3.0}, {2.0, 4.0}}));
}

BOOST_AUTO_TEST_CASE(unstack_undoes_stack) {
    const Tensor<double> x(Array{{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}});
    const auto rows = unstack(x, 0), columns = unstack(x, 1);
    BOOST_REQUIRE_EQUAL(rows.size(), 2u);
    BOOST_REQUIRE_EQUAL(columns.size(), 3u);
    BOOST_TEST(rows[1].value() == (Array{4.0, 5.0, 6.0}));
    BOOST_TEST(columns[2].value() == (Array{3.0, 6.0}));
    BOOST_TEST(stack(columns, 1).value() == x.value());
}

BOOST_AUTO_TEST_CASE(stack_passes_gradients_only_to_parts_that_require_them) {
    Tensor<double> a(Array{1.0, 2.0}, true);
    const Tensor<double> b(Array{3.0, 4.0});
    sum(mul(stack<double>({a, b}, 0), Tensor<double>(Array{{1.0, 2.0}, {3.0, 4.0}}))).backward();
    BOOST_TEST(a.grad().value() == (Array{1.0, 2.0}));
    BOOST_TEST(!b.grad().defined());
}

BOOST_AUTO_TEST_CASE(split_returns_consecutive_pieces) {
    const Tensor<double> x(Array{{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}});
    const auto pieces = split(x, {2, 1}, 1);
    BOOST_REQUIRE_EQUAL(pieces.size(), 2u);
    BOOST_TEST(pieces[0].value() == (Array{{1.0, 2.0}, {4.0, 5.0}}));
    Array last_column{3.0, 6.0};
    last_column.reshape({2, 1});
    BOOST_TEST(pieces[1].value() == last_column);
}

BOOST_AUTO_TEST_CASE(chunk_sizes_follow_torch_chunk) {
    const auto sizes_of = [](std::size_t extent, std::size_t chunks) {
        std::vector<std::size_t> sizes;
        for (const auto& piece : chunk(Tensor<double>::zeros({extent, 2}), chunks, 0)) sizes.push_back(piece.size(0));
        return sizes;
    };
    BOOST_TEST(sizes_of(7, 3) == (std::vector<std::size_t>{3, 3, 1}), boost::test_tools::per_element());
    BOOST_TEST(sizes_of(8, 4) == (std::vector<std::size_t>{2, 2, 2, 2}), boost::test_tools::per_element());
    // Pieces of ceil(6 / 4) = 2 leave only three pieces, as torch.chunk does.
    BOOST_TEST(sizes_of(6, 4) == (std::vector<std::size_t>{2, 2, 2}), boost::test_tools::per_element());
    BOOST_TEST(sizes_of(2, 5) == (std::vector<std::size_t>{1, 1}), boost::test_tools::per_element());
    BOOST_TEST(sizes_of(0, 3) == (std::vector<std::size_t>{0, 0, 0}), boost::test_tools::per_element());
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

// ---------------------------------------------------------------- errors

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

BOOST_AUTO_TEST_CASE(matmul_with_different_inner_dimensions_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { matmul(Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({4, 5})); },
                             {"matmul", shape_string({2, 3}), shape_string({4, 5})});
    expect_error<ShapeError>([] { matmul(Tensor<double>::zeros({2, 2, 3}), Tensor<double>::zeros({4, 5})); },
                             {"matmul", shape_string({2, 2, 3}), shape_string({4, 5})});
}

BOOST_AUTO_TEST_CASE(matmul_of_unsupported_ranks_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { matmul(Tensor<double>::zeros({3}), Tensor<double>::zeros({3, 2})); },
                             {"matmul", shape_string({3}), shape_string({3, 2})});
}

BOOST_AUTO_TEST_CASE(reshape_to_another_element_count_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { reshape(Tensor<double>::zeros({2, 3}), {4, 2}); },
                             {"reshape", shape_string({2, 3}), shape_string({4, 2})});
}

BOOST_AUTO_TEST_CASE(broadcast_to_an_incompatible_shape_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { broadcast_to(Tensor<double>::zeros({2, 3}), {2, 4}); },
                             {"broadcast_to", shape_string({2, 3}), shape_string({2, 4})});
}

BOOST_AUTO_TEST_CASE(concat_of_parts_differing_off_the_axis_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { concat<double>({Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({3, 3})}, 1); },
                             {"concat", shape_string({2, 3}), shape_string({3, 3})});
    expect_error<ShapeError>([] { concat<double>({Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({2, 3, 1})}, 1); },
                             {"concat", shape_string({2, 3}), shape_string({2, 3, 1})});
}

BOOST_AUTO_TEST_CASE(concat_of_no_parts_throws_invalid_argument) {
    BOOST_CHECK_THROW(concat<double>({}, 0), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(stack_of_parts_with_different_shapes_names_the_op_and_both_shapes) {
    expect_error<ShapeError>([] { stack<double>({Tensor<double>::zeros({2, 3}), Tensor<double>::zeros({3, 2})}, 0); },
                             {"stack", shape_string({2, 3}), shape_string({3, 2})});
}

BOOST_AUTO_TEST_CASE(slice_beyond_the_axis_names_the_op_the_range_and_the_shape) {
    expect_error<ShapeError>([] { slice(Tensor<double>::zeros({2, 3}), 1, 2, 4); },
                             {"slice", "[2, 4)", shape_string({2, 3})});
    expect_error<ShapeError>([] { slice(Tensor<double>::zeros({2, 3}), 2, 0, 1); }, {"slice", "axis 2", shape_string({2, 3})});
}

BOOST_AUTO_TEST_CASE(split_sizes_not_summing_to_the_extent_name_the_op_and_the_shape) {
    expect_error<ShapeError>([] { split(Tensor<double>::zeros({2, 5}), {2, 2}, 1); },
                             {"split", "[2, 2]", shape_string({2, 5})});
}

BOOST_AUTO_TEST_CASE(chunk_into_zero_chunks_throws_invalid_argument) {
    expect_error<std::invalid_argument>([] { chunk(Tensor<double>::zeros({4}), 0, 0); }, {"chunk"});
}

BOOST_AUTO_TEST_CASE(index_select_out_of_range_names_the_op_the_index_and_the_shape) {
    expect_error<std::invalid_argument>([] { index_select(Tensor<double>::zeros({3, 2}), 0, {0, 3}); },
                                        {"index_select", "index 3", shape_string({3, 2})});
    expect_error<std::invalid_argument>([] { index_select(Tensor<double>::zeros({3, 2}), 0, {-1}); },
                                        {"index_select", "index -1", shape_string({3, 2})});
}

BOOST_AUTO_TEST_CASE(softmax_over_a_missing_axis_names_the_op_and_the_shape) {
    expect_error<ShapeError>([] { softmax(Tensor<double>::zeros({2, 3}), 2); }, {"softmax", shape_string({2, 3})});
    expect_error<ShapeError>([] { log_softmax(Tensor<double>::zeros({2, 3}), 2); }, {"log_softmax", shape_string({2, 3})});
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
    for (double p : {1.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
        BOOST_TEST_CONTEXT("p " << p) {
            Generator generator(1);
            expect_error<std::invalid_argument>([&] { dropout(Tensor<double>::ones({2}), p, true, generator); },
                                                {"dropout", "p"});
        }
    }
}

BOOST_AUTO_TEST_CASE(dropout_rejects_a_bad_p_outside_training_too) {
    Generator generator(1);
    BOOST_CHECK_THROW(dropout(Tensor<double>::ones({2}), 1.0, false, generator), std::invalid_argument);
}

// ---------------------------------------------------------------- float

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

BOOST_AUTO_TEST_CASE(float_softmax_of_1000_and_1001_is_finite_and_correct) {
    const Tensor<float> y = softmax(Tensor<float>(xt::xarray<float>{1000.0f, 1001.0f}), 0);
    const double e = std::exp(1.0);
    BOOST_TEST(std::abs(y.value()(0) - 1 / (1 + e)) < 1e-6);
    BOOST_TEST(std::abs(y.value()(1) - e / (1 + e)) < 1e-6);
}

BOOST_AUTO_TEST_SUITE_END()
