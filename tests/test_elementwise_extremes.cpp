// Element-wise ops at every argument: +-huge, +-inf, NaN, denormals, in float and double, on the
// scalar loop (up to 32 elements) and the vector loop (xsimd, with a scalar tail). The values
// are the C++ library's (std::exp and friends) wherever those are defined; under
// scripts/check-sanitizers (UBSan with float-cast-overflow) the same cases show that no
// argument reaches undefined behaviour (Note [Saturated arguments, generic ops] in
// ops_elementwise.cpp).

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xmath.hpp>

#include <rewind/autograd.hpp>

namespace {

using boost::unit_test::framework::current_test_case;

template <class T>
std::vector<T> extreme_arguments() {
    using limits = std::numeric_limits<T>;
    const T huge = sizeof(T) == 8 ? T(1e300) : T(1e38);
    return {huge,         -huge,         limits::max(), limits::lowest(), limits::infinity(), -limits::infinity(),
            limits::quiet_NaN(), limits::denorm_min(), -limits::denorm_min(), limits::min(), T(0), -T(0),
            T(0.5),       T(-3),         T(20),         T(-20),           T(88),  T(-88), T(700), T(-700),
            T(800),       T(-800),       T(801),        T(-801),          T(40),  T(-40), T(41),  T(-41)};
}

// Equal as IEEE values (NaN matches NaN, infinities and zeros exactly), else within a few ulps.
// A subnormal result may come back as zero: xsimd's float exp flushes below the smallest normal
// number (exp(-88) gives 0, not 6.05e-39), on the fused path's lanes alike.
template <class T>
bool agrees(T got, T expected) {
    if (std::isnan(expected)) return std::isnan(got);
    if (std::isinf(expected) || expected == T(0)) return got == expected;
    if (got == T(0) && std::abs(expected) < std::numeric_limits<T>::min()) return true;
    return std::abs(got - expected) <= 8 * std::numeric_limits<T>::epsilon() * std::abs(expected);
}

template <class T>
struct Unary {
    std::string name;
    std::function<rw::Tensor<T>(const rw::Tensor<T>&)> op;
    std::function<T(T)> value;       // the C++ library's
    std::function<T(T)> derivative;  // f'(x), from the same functions
};

template <class T>
T logistic(T v) { return T(1) / (T(1) + std::exp(-v)); }

template <class T>
std::vector<Unary<T>> unary_ops() {
    return {
        {"exp", [](const auto& x) { return rw::exp(x); }, [](T v) { return std::exp(v); }, [](T v) { return std::exp(v); }},
        {"sigmoid", [](const auto& x) { return rw::sigmoid(x); }, logistic<T>,
         [](T v) { return logistic(v) * (T(1) - logistic(v)); }},
        {"tanh", [](const auto& x) { return rw::tanh(x); }, [](T v) { return std::tanh(v); },
         [](T v) { return T(1) - std::tanh(v) * std::tanh(v); }},
        {"log", [](const auto& x) { return rw::log(x); }, [](T v) { return std::log(v); }, [](T v) { return T(1) / v; }},
        {"sqrt", [](const auto& x) { return rw::sqrt(x); }, [](T v) { return std::sqrt(v); },
         [](T v) { return T(0.5) / std::sqrt(v); }},
        {"pow 2", [](const auto& x) { return rw::pow(x, T(2)); }, [](T v) { return std::pow(v, T(2)); },
         [](T v) { return T(2) * std::pow(v, T(1)); }},
        {"pow -3", [](const auto& x) { return rw::pow(x, T(-3)); }, [](T v) { return std::pow(v, T(-3)); },
         [](T v) { return T(-3) * std::pow(v, T(-4)); }},
        {"pow 0.5", [](const auto& x) { return rw::pow(x, T(0.5)); }, [](T v) { return std::pow(v, T(0.5)); },
         [](T v) { return T(0.5) * std::pow(v, T(-0.5)); }},
        {"relu", [](const auto& x) { return rw::relu(x); }, [](T v) { return v > T(0) ? v : T(0); },
         [](T v) { return T(v > T(0)); }},
    };
}

// Each argument alone (the scalar loop) and repeated 67 times (vector lanes and a tail of 3).
template <class T>
void check_values_and_gradients() {
    for (const auto& op : unary_ops<T>())
        for (T argument : extreme_arguments<T>())
            for (std::size_t n : {std::size_t(1), std::size_t(67)}) {
                rw::Tensor<T> x = rw::Tensor<T>::full({n}, argument, true);
                const rw::Tensor<T> y = op.op(x);
                rw::sum(y).backward();
                for (std::size_t i = 0; i < n; ++i) {
                    BOOST_TEST_CONTEXT(op.name << "(" << argument << ") element " << i << " of " << n) {
                        BOOST_TEST(agrees(y.value()(i), op.value(argument)), y.value()(i) << " vs " << op.value(argument));
                        BOOST_TEST(agrees(x.grad().value()(i), op.derivative(argument)),
                                   x.grad().value()(i) << " vs " << op.derivative(argument));
                    }
                }
            }
}

// The vector loop gives bit for bit what xtensor's unclamped expression (the loop before the
// clamping) gives wherever that is defined: a bound set inside the unsaturated range fails this.
template <class T>
void check_vector_loop_matches_xtensor() {
    xt::xarray<T> x = xt::linspace<T>(T(-45), T(45), 1001);
    const rw::Tensor<T> input(x);
    BOOST_TEST((rw::tanh(input).value() == xt::xarray<T>(xt::tanh(x))));
    BOOST_TEST((rw::exp(input).value() == xt::xarray<T>(xt::exp(x))));
    BOOST_TEST((rw::sigmoid(input).value() == xt::xarray<T>(T(1) / (T(1) + xt::exp(-x)))));
    const xt::xarray<T> wide = xt::linspace<T>(T(-790), T(790), 1001);
    BOOST_TEST((rw::exp(rw::Tensor<T>(wide)).value() == xt::xarray<T>(xt::exp(wide))));
    BOOST_TEST((rw::sigmoid(rw::Tensor<T>(wide)).value() == xt::xarray<T>(T(1) / (T(1) + xt::exp(-wide)))));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(extremes)

BOOST_AUTO_TEST_CASE(unary_ops_at_extreme_arguments_give_the_library_values_and_derivatives_in_double) {
    check_values_and_gradients<double>();
}

BOOST_AUTO_TEST_CASE(unary_ops_at_extreme_arguments_give_the_library_values_and_derivatives_in_float) {
    check_values_and_gradients<float>();
}

BOOST_AUTO_TEST_CASE(the_clamped_vector_loop_equals_xtensors_expression_where_that_is_defined) {
    check_vector_loop_matches_xtensor<double>();
    check_vector_loop_matches_xtensor<float>();
}

BOOST_AUTO_TEST_SUITE_END()
