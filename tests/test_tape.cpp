#include <boost/test/unit_test.hpp>

#include <rewind/autograd.hpp>

using namespace rw;
using Array = xt::xarray<double>;

BOOST_AUTO_TEST_SUITE(tape)

BOOST_AUTO_TEST_CASE(backward_of_a_product_and_tanh_gives_known_gradients) {
    Tensor<double> x(Array{0.5, -1.0}, true);
    Tensor<double> w(Array{2.0, 3.0}, true);
    Tensor<double> loss = sum(tanh(mul(x, w)));
    loss.backward();
    for (std::size_t i = 0; i < 2; ++i) {
        const double z = x.value()(i) * w.value()(i);
        const double d = 1 - std::tanh(z) * std::tanh(z);
        BOOST_TEST(x.grad().value()(i) == d * w.value()(i), boost::test_tools::tolerance(1e-14));
        BOOST_TEST(w.grad().value()(i) == d * x.value()(i), boost::test_tools::tolerance(1e-14));
    }
}

BOOST_AUTO_TEST_SUITE_END()
