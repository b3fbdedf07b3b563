// The tests of autograd/src/ops_shape.cpp: products (gemm, matmul, the packed GEMM) and layout ops.
// Each backward rule against central differences (gradcheck), second derivatives
// (gradgradcheck), hand-computed values, and the errors a user gets for bad input.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
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

BOOST_AUTO_TEST_SUITE(ops_shape)

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
    BOOST_TEST(squeeze(x, 1).grad_fn()->name() == "squeeze");
}

BOOST_AUTO_TEST_CASE(squeeze_of_an_axis_longer_than_one_and_unsqueeze_past_the_end_name_the_op) {
    expect_error<ShapeError>([] { squeeze(Tensor<double>::zeros({2, 3}), 1); }, {"squeeze", "axis 1 has extent 3, expected 1"});
    expect_error<ShapeError>([] { unsqueeze(Tensor<double>::zeros({2, 3}), 3); }, {"unsqueeze", "axis 3 out of range 0..2"});
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
std::pair<Shape, Shape> three_axis_operands(bool transpose_a, bool transpose_b) {
    return {transpose_a ? Shape{2, 2, 6} : Shape{2, 3, 4}, transpose_b ? Shape{5, 1, 4} : Shape{2, 2, 5}};
}

// The repeated-product entry of the GEMM layer against plain gemm(): sizes that are not multiples
// of any block, B transposed or not, beta 0 and 1, strided A and C, used once or many times, each
// way of computing it pinned and the timed choice.
template <class T>
void check_packed_gemm(double tolerance) {
    Generator generator(3);
    auto random = [&](std::size_t size) {
        std::vector<T> values(size);
        for (auto& v : values) v = T(generator.uniform(-1, 1));
        return values;
    };
    const std::int64_t m = 5, n = 37, k = 19, lda = k + 3, ldc = n + 2;
    using rw::blas::RepeatedGemm;
    for (const auto policy : {RepeatedGemm::packed, RepeatedGemm::plain, RepeatedGemm::transposed, RepeatedGemm::fastest})
    for (const bool transpose_b : {false, true})
        for (const T beta : {T(0), T(1)})
            for (const std::int64_t uses : {std::int64_t(1), std::int64_t(100)}) {
                const std::int64_t ldb = (transpose_b ? k : n) + 1;
                const auto b = random(std::size_t((transpose_b ? n : k) * ldb));
                rw::blas::set_repeated_gemm(policy);
                const rw::blas::PackedGemm<T> packed(transpose_b, m, n, k, b.data(), ldb, beta, lda, ldc, uses);
                rw::blas::set_repeated_gemm(RepeatedGemm::fastest);
                // Float on oneDNN computes it the way asked, when used often enough; the rest call gemm().
                const bool chooses = uses > 1 && std::is_same_v<T, float> && rw::blas::float_backend() == std::string("onednn");
                if (policy != RepeatedGemm::fastest)
                    BOOST_TEST((packed.used() == (chooses ? policy : RepeatedGemm::plain)));
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
                                       "policy " << int(policy) << " transpose_b " << transpose_b << " beta "
                                                 << beta << " uses " << uses << " at " << i << "," << j);
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

BOOST_AUTO_TEST_SUITE_END()
