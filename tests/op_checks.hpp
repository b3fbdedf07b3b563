#pragma once
// Checks shared by the op tests (test_ops_*.cpp, one per autograd/src/ops_*.cpp): inputs drawn
// from fixed seeds, gradcheck and gradgradcheck as Boost.Test assertions, broadcast patterns.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <rewind/autograd.hpp>

#include "test_helpers.hpp"

namespace rw::op_checks {

// A file of the repository as text (ops.hpp, the sources, docs/derivatives.md), for the tests that
// hold the op list, the code and the formula table to each other.
inline std::string read_repository_file(const std::filesystem::path& relative) {
    const std::filesystem::path path = std::filesystem::path(REWIND_TESTS_DIR) / ".." / relative;
    std::ifstream file(path);
    BOOST_REQUIRE_MESSAGE(file, "cannot read " << path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

using Array = xt::xarray<double>;
using Inputs = std::vector<Tensor<double>>;

inline Array random_array(const Shape& shape, std::uint64_t seed, double low, double high) {
    std::mt19937_64 engine(seed);
    std::uniform_real_distribution<double> uniform(low, high);
    Array value = Array::from_shape(shape);
    for (std::size_t i = 0; i < value.size(); ++i) value.data()[i] = uniform(engine);
    return value;
}

// An input that requires a gradient, uniform in [low, high).
inline Tensor<double> input(const Shape& shape, std::uint64_t seed, double low = -1.0, double high = 1.0) {
    return Tensor<double>(random_array(shape, seed, low, high), true);
}

// An input whose elements lie in ±[0.2, 1): for ops with a kink at 0, where central
// differences would straddle the kink.
inline Tensor<double> input_away_from_zero(const Shape& shape, std::uint64_t seed) {
    Array value = random_array(shape, seed, 0.2, 1.0);
    const Array sign = random_array(shape, seed + 1000, -1.0, 1.0);
    for (std::size_t i = 0; i < value.size(); ++i)
        if (sign.data()[i] < 0) value.data()[i] = -value.data()[i];
    return Tensor<double>(std::move(value), true);
}

// A fixed tensor that takes no gradient.
inline Tensor<double> constant(const Shape& shape, std::uint64_t seed) {
    return Tensor<double>(random_array(shape, seed, -1.0, 1.0));
}

// Differentiating <f, r> for a random r only ever sees the op through one projection; multi-output
// ops are reduced the same way, each output against its own fixed weights.
inline Tensor<double> weighted_sum(const std::vector<Tensor<double>>& parts) {
    Tensor<double> total = Tensor<double>::scalar(0.0);
    for (std::size_t i = 0; i < parts.size(); ++i) total = add(total, sum(mul(parts[i], constant(parts[i].shape(), 500 + i))));
    return total;
}

// A linear op has a zero second derivative, so its double backward is only exercised once a
// nonlinearity follows it: the square of its output.
inline CheckedFunction squared(CheckedFunction function) {
    return [function](const Inputs& xs) {
        const Tensor<double> y = function(xs);
        return mul(y, y);
    };
}

inline void expect_gradients_match(const CheckedFunction& function, const Inputs& inputs) {
    const GradcheckReport report = gradcheck(function, inputs);
    BOOST_CHECK_MESSAGE(report.passed, report.to_string());
}

inline void expect_second_derivatives_match(const CheckedFunction& function, const Inputs& inputs) {
    const GradcheckReport report = gradgradcheck(function, inputs);
    BOOST_CHECK_MESSAGE(report.passed, report.to_string());
}

using BinaryOp = Tensor<double> (*)(const Tensor<double>&, const Tensor<double>&);

// Equal shapes, a column against a row, a trailing vector, and a 0-d operand on either side.
inline const std::vector<std::pair<Shape, Shape>> broadcast_patterns = {
    {{2, 3}, {2, 3}}, {{3, 1}, {1, 4}}, {{2, 3, 4}, {4}}, {{}, {2, 3}}, {{2, 3}, {}}};

// The second operand is drawn from [low_b, high_b) so that div stays away from zero.
inline void check_binary_op(BinaryOp op, bool second_derivative, double low_b = -1.0, double high_b = 1.0) {
    for (const auto& [shape_a, shape_b] : broadcast_patterns) {
        BOOST_TEST_CONTEXT("shapes " << shape_string(shape_a) << " and " << shape_string(shape_b)) {
            const Inputs inputs = {input(shape_a, 1), input(shape_b, 2, low_b, high_b)};
            const CheckedFunction function = [op](const Inputs& x) { return op(x[0], x[1]); };
            if (second_derivative) expect_second_derivatives_match(function, inputs);
            else expect_gradients_match(function, inputs);
        }
    }
}

}  // namespace rw::op_checks
