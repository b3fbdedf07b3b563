#pragma once
// Helpers every test suite shares: random tensors, checks of error messages, array differences.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <rewind/autograd.hpp>

namespace rw::testing {

// Uniform in [-scale, scale), from the caller's generator.
template <class T = double>
Tensor<T> random_tensor(const Shape& shape, Generator& generator, double scale = 1.0, bool requires_grad = false) {
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape);
    for (auto& v : value) v = static_cast<T>(generator.uniform(-scale, scale));
    return Tensor<T>(std::move(value), requires_grad);
}

// Runs `action` and expects an Error whose message contains every fragment.
template <class Error, class Action>
void expect_error(Action action, const std::vector<std::string>& fragments) {
    try {
        action();
        BOOST_ERROR("nothing was thrown");
    } catch (const Error& error) {
        const std::string message = error.what();
        for (const auto& fragment : fragments)
            BOOST_CHECK_MESSAGE(message.find(fragment) != std::string::npos,
                                "message \"" << message << "\" does not contain \"" << fragment << "\"");
    }
}

// The largest absolute element-wise difference; the shapes must agree.
template <class A, class B>
double max_abs_difference(const A& a, const B& b) {
    BOOST_REQUIRE(to_shape(a.shape()) == to_shape(b.shape()));
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(double(a.data()[i]) - double(b.data()[i])));
    return worst;
}

}  // namespace rw::testing
