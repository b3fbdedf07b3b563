// Sizes whose product overflows are refused with a SizeError naming the op and the shape, before
// anything is allocated or written (issue 13): the autograd factories and ops, and the recurrent
// layers when they are built and when they run.

#include <boost/test/unit_test.hpp>

#include <initializer_list>
#include <string>

#include <rewind/autograd.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/fused/check.hpp>
#include <rewind/nn/layers/cells.hpp>
#include <rewind/nn/layers/init.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace {

constexpr std::size_t two_to_62 = std::size_t(1) << 62;
constexpr std::size_t two_to_29 = std::size_t(1) << 29;
constexpr std::size_t hidden = 16;

// An input that exists without holding anything: [2^29, 2^29, 0] (an empty tensor's strides still
// multiply 2^58 by 8 bytes, which fits). Its T x B is real, so every buffer a forward sizes from
// T x B x H overflows: 2^58 x 16 x 8 bytes = 2^65.
rw::Tensor<double> empty_but_long_input() { return rw::Tensor<double>::zeros({two_to_29, two_to_29, 0}); }

// A user's cell that reads no input, h' = tanh(h W^T) (a free-running recurrence): input_size 0 is
// a real size for it, as it is not for the built-in cells, so the input above is one it accepts.
class AutonomousCell : public rw::nn::RecurrentCell<double> {
public:
    explicit AutonomousCell(rw::Generator& g) : RecurrentCell(0, hidden) {
        weight_hh_ = register_parameter("weight_hh", rw::Tensor<double>(rw::nn::init::uniform<double>({hidden, hidden}, -0.25, 0.25, g)));
    }
    rw::nn::State<double> step(const rw::Tensor<double>&, const rw::nn::State<double>& state) const override {
        return {rw::tanh(rw::matmul(state[0], rw::transpose(weight_hh_)))};
    }

private:
    rw::Tensor<double> weight_hh_;
};

std::shared_ptr<rw::nn::Recurrent<double>> autonomous_layer(rw::nn::ExecutionPath path) {
    const rw::nn::CellFactory<double> factory = [](const rw::nn::CellSite&, rw::Generator& g) {
        return std::make_shared<AutonomousCell>(g);
    };
    return std::make_shared<rw::nn::Recurrent<double>>(factory, rw::nn::RecurrentOptions{.input_size = 0, .hidden_size = hidden,
                                                                                        .path = path});
}

// The same recurrence's rules for the fused driver (never run: the sizes are refused first).
struct AutonomousRules : rw::nn::fused::CellRules<double> {
    const std::type_info& rules_cell_type() const override { return typeid(AutonomousCell); }
    rw::nn::fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 1}; }
    rw::nn::fused::CellWeights<double> weights() const override {
        return {.input_weight = rw::Tensor<double>::zeros({hidden, 0}), .recurrent_weight = rw::Tensor<double>::zeros({hidden, hidden})};
    }
    void forward(const rw::nn::fused::ForwardRow<double>&) const override {}
    void backward(const rw::nn::fused::BackwardRow<double>&) const override {}
};

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

BOOST_AUTO_TEST_CASE(initialisers_and_linear_refuse_shapes_whose_size_overflows) {
    rw::Generator g(1);
    expect_size_error([&] { rw::nn::init::uniform<double>({two_to_62, 4}, -1.0, 1.0, g); },
                      {"init::uniform: shape [4611686018427387904, 4] is too large"});
    expect_size_error([&] { rw::nn::Linear<float>(two_to_62, 4, g); }, {"init::uniform: shape [4, 4611686018427387904]"});
}

BOOST_AUTO_TEST_CASE(a_recurrent_forward_refuses_buffers_that_overflow_whichever_path_is_asked_for) {
    // Checked on entry to forward, before either path sizes its output or gate buffers.
    for (const auto path : {rw::nn::ExecutionPath::generic, rw::nn::ExecutionPath::fused}) {
        auto layer = autonomous_layer(path);
        expect_size_error([&] { layer->forward(empty_but_long_input()); },
                          {"recurrent layer: shape [536870912, 536870912, 4, 16] is too large"});
    }
}

BOOST_AUTO_TEST_CASE(the_fused_driver_refuses_buffers_that_overflow_when_called_directly) {
    // run_sequence is public (user cells' rules): it checks on its own, before the initial state.
    expect_size_error([] { rw::nn::fused::run_sequence<double>(std::make_shared<AutonomousRules>(), empty_but_long_input(), {}, {}, false, "autonomous"); },
                      {"fused_autonomous: shape [536870912, 536870912, ", "is too large"});
}

BOOST_AUTO_TEST_CASE(a_single_step_refuses_a_batch_whose_state_would_overflow) {
    // One step on the generic path: the zero initial state [B, H] is sized from x's B.
    auto layer = autonomous_layer(rw::nn::ExecutionPath::generic);
    const std::size_t batch = std::size_t(1) << 59;
    expect_size_error([&] { layer->step(rw::Tensor<double>::zeros({batch, 0}), {}); },
                      {"zeros: shape [576460752303423488, 16] is too large"});
}

BOOST_AUTO_TEST_CASE(the_fused_rule_check_refuses_steps_whose_data_would_overflow) {
    rw::Generator g(3);
    const rw::nn::GRUCell<double> cell(3, 4, g);
    expect_size_error([&] { rw::nn::check_fused_cell(cell, {.steps = two_to_62, .batch = 1}); },
                      {"check_fused_cell: shape [4611686018427387904, 1, 3] is too large"});
}

BOOST_AUTO_TEST_SUITE_END()
