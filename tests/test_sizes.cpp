// Sizes whose product overflows are refused with a SizeError naming the op and the shape, before
// anything is allocated or written (issue 13): the autograd factories and ops, and the recurrent
// layers when they are built and when they run.

#include <boost/test/unit_test.hpp>

#include <initializer_list>
#include <string>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace {

constexpr std::size_t two_to_62 = std::size_t(1) << 62;

// `action` throws a SizeError whose message holds every fragment.
template <class Action>
void expect_size_error(Action action, std::initializer_list<std::string> fragments) {
    try {
        action();
        BOOST_ERROR("no SizeError");
    } catch (const rw::SizeError& error) {
        const std::string message = error.what();
        for (const auto& fragment : fragments)
            BOOST_TEST(message.find(fragment) != std::string::npos, "'" << fragment << "' not in: " << message);
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sizes)

BOOST_AUTO_TEST_CASE(checked_sizes_multiply_exactly_up_to_the_buffer_limit_and_refuse_beyond) {
    BOOST_TEST(rw::checked_element_count("op", {3, 4, 5}, 8) == 60u);
    BOOST_TEST(rw::checked_element_count("op", {0, 7}, 8) == 0u);
    BOOST_TEST(rw::checked_element_count("op", {}, 8) == 1u);
    BOOST_TEST(rw::checked_byte_size("op", 10, 4) == 40u);
    BOOST_TEST(rw::checked_product("L x D", 3, 2) == 6u);
    expect_size_error([] { rw::checked_element_count("op", {two_to_62, 1, 4}, 8); },
                      {"op: shape [4611686018427387904, 1, 4] is too large", "9223372036854775807 bytes"});
    // An empty dimension does not hide the others: xtensor's strides still multiply them.
    expect_size_error([] { rw::checked_element_count("op", {0, two_to_62, 4}, 8); }, {"op: shape [0, "});
    expect_size_error([] { rw::checked_byte_size("op", two_to_62, 2); }, {"op: 4611686018427387904 elements of 2 bytes"});
    expect_size_error([] { rw::checked_product("L x D", std::size_t(1) << 63, 2); }, {"L x D: 9223372036854775808 x 2"});
}

BOOST_AUTO_TEST_CASE(tensor_factories_refuse_shapes_whose_size_overflows) {
    expect_size_error([] { rw::Tensor<float>::zeros({two_to_62, 1, 4}); }, {"zeros: shape [4611686018427387904, 1, 4]"});
    expect_size_error([] { rw::Tensor<double>::ones({two_to_62, 4}); }, {"ones: "});
    expect_size_error([] { rw::Tensor<double>::full({4, two_to_62}, 1.0); }, {"full: "});
}

BOOST_AUTO_TEST_CASE(ops_refuse_results_whose_size_overflows) {
    // Empty tensors of shapes [0, 2^40, 1] and [0, 1, 2^40] exist; their broadcast [0, 2^40, 2^40]
    // would have strides beyond any index.
    const std::size_t big = std::size_t(1) << 40;
    const rw::Tensor<double> tall = rw::reshape(rw::Tensor<double>::zeros({0}), {0, big, 1});
    const rw::Tensor<double> wide = rw::reshape(rw::Tensor<double>::zeros({0}), {0, 1, big});
    expect_size_error([&] { rw::add(tall, wide); }, {"[0, 1099511627776, 1099511627776] is too large"});
    // (2^62 + 1) * 4 wraps around to 4, the element count of the tensor.
    expect_size_error([] { rw::reshape(rw::Tensor<double>::zeros({4}), {two_to_62 + 1, 4}); }, {"reshape: "});
}

BOOST_AUTO_TEST_CASE(a_recurrent_layer_refuses_sizes_that_overflow_before_building_its_cells) {
    expect_size_error([] { rw::nn::make_recurrent<double>("lstm", {.input_size = 4, .hidden_size = two_to_62}); },
                      {"recurrent layer: shape [4, 4611686018427387904, 4611686018427387904] is too large"});
    expect_size_error([] { rw::nn::make_recurrent<float>("gru", {.input_size = 4, .hidden_size = two_to_62 * 2,
                                                                .bidirectional = true}); },
                      {"recurrent layer: hidden_size x directions: 9223372036854775808 x 2"});
}

BOOST_AUTO_TEST_SUITE_END()
