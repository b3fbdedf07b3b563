// The checks of issue 20 that cannot be fooled, checked themselves: rw::jvpcheck (J v against
// central differences, and the adjoint identity <J v, u> = <v, J^T u> between rw::jvp and rw::vjp
// to 1e-12), rw::hvpcheck (H v against central differences of gradients), and the layer's
// second-order checks, whole and per time step. Each check must pass on right rules and fail, at
// the right place, on a rule planted wrong.

#include <cmath>

#include <rewind/autograd/forward.hpp>
#include <rewind/autograd/function.hpp>
#include <rewind/autograd/gradcheck.hpp>
#include <rewind/nn/layers/init.hpp>
#include <rewind/nn/layers/layer_check.hpp>

using namespace rw;
using namespace rw::nn;

namespace {

Tensor<double> random_tensor(const Shape& shape, std::uint64_t seed, double scale = 0.5, bool requires_grad = true) {
    Generator generator(seed);
    xt::xarray<double> value = xt::xarray<double>::from_shape(shape);
    for (double& v : value) v = generator.uniform(-scale, scale);
    return Tensor<double>(std::move(value), requires_grad);
}

// y = x * x with its forward-mode rule and backward rule each right or scaled by `off`; the
// backward's own derivative (what create_graph and forward-over-reverse see) is right, or, with
// `frozen_backward`, only half of it: the backward 2 x g is computed as (x + x') g with x' a
// constant copy of x, right in value, with derivative g instead of 2 g.
struct SquareFaults {
    double forward = 1, backward = 1;
    bool frozen_backward = false;
};

Tensor<double> square(const Tensor<double>& x, SquareFaults faults = {}) {
    return record_op<double>(
        "square", {x}, xt::xarray<double>(x.value() * x.value()),
        [faults](const BackwardContext<double>& ctx) -> Gradients<double> {
            const Tensor<double>& input = ctx.input(0);
            const Tensor<double> twice = faults.frozen_backward ? input + Tensor<double>(input.value()) : input + input;
            const Tensor<double> g = ctx.grad_output(0) * twice;
            return {faults.backward == 1 ? g : g * faults.backward};
        },
        [faults](const ForwardContext<double>& ctx) -> std::vector<Tensor<double>> {
            const Tensor<double>& input = ctx.input(0);
            return {ctx.tangent(0) * (input + input) * faults.forward};
        });
}

// Two inputs, two outputs: tanh(a * b + square(a)) and sum(a * a * b).
TensorFunction<double> two_outputs(SquareFaults faults = {}) {
    return [faults](const std::vector<Tensor<double>>& in) -> std::vector<Tensor<double>> {
        return {tanh(in[0] * in[1] + square(in[0], faults)), sum(in[0] * in[0] * in[1])};
    };
}

std::vector<Tensor<double>> two_inputs() { return {random_tensor({3, 2}, 1), random_tensor({3, 2}, 2)}; }

}  // namespace

BOOST_AUTO_TEST_SUITE(forward_mode_checks)

BOOST_AUTO_TEST_CASE(jvpcheck_passes_with_the_adjoint_identity_to_1e_12_for_right_rules) {
    const JvpReport report = jvpcheck(two_outputs(), two_inputs(), {}, {"a", "b"}, {"y", "s"});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST(report.max_adjoint_error <= 1e-12);
    BOOST_TEST_REQUIRE(report.tangents.size() == 2u);
    BOOST_TEST(report.tangents[1].input == "b");
    BOOST_TEST_REQUIRE(report.tangents[1].outputs.size() == 2u);
    BOOST_TEST(report.tangents[1].outputs[0].name == "y");
    BOOST_TEST(report.tangents[1].outputs[0].shape == Shape({3, 2}));
    BOOST_TEST(report.tangents[1].adjoint[1].output == "s");
    // Both sides of the identity are the same nonzero number.
    BOOST_TEST(std::abs(report.tangents[0].adjoint[0].jvp_side) > 1e-3);
}

BOOST_AUTO_TEST_CASE(an_input_that_does_not_require_a_gradient_gets_no_tangent) {
    std::vector<Tensor<double>> inputs = two_inputs();
    inputs[1] = random_tensor({3, 2}, 2, 0.5, /*requires_grad=*/false);
    const JvpReport report = jvpcheck(two_outputs(), inputs, {}, {"a", "b"});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST_REQUIRE(report.tangents.size() == 1u);
    BOOST_TEST(report.tangents[0].input == "a");
}

BOOST_AUTO_TEST_CASE(a_forward_rule_off_by_one_percent_fails_both_checks_of_its_input_only) {
    const JvpReport report = jvpcheck(two_outputs({.forward = 1.01}), two_inputs(), {}, {"a", "b"}, {"y", "s"});
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST(!report.passed);
    BOOST_TEST(!report.tangents[0].outputs[0].passed);  // y's J v along a
    BOOST_TEST(!report.tangents[0].adjoint[0].passed);
    BOOST_TEST(report.tangents[0].outputs[1].passed);   // s does not go through square()
    BOOST_TEST(report.tangents[1].passed());            // nor does b's tangent
    BOOST_TEST(report.to_string().find("ADJOINT FAILED") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_backward_rule_off_by_one_percent_breaks_only_the_adjoint_identity) {
    // J v is right, so central differences agree with it; the identity pairs it with J^T u.
    const JvpReport report = jvpcheck(two_outputs({.backward = 1.01}), two_inputs(), {}, {"a", "b"}, {"y", "s"});
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.tangents[0].outputs[0].passed);
    BOOST_TEST(!report.tangents[0].adjoint[0].passed);
    BOOST_TEST(report.tangents[0].adjoint[0].rel_error > 1e-4);
}

BOOST_AUTO_TEST_CASE(a_rule_wrong_by_one_part_in_a_billion_passes_central_differences_but_not_the_adjoint_identity) {
    // A rule wrong by one part in 1e9 is far below central differences' resolution yet fails
    // the adjoint identity at 1e-12.
    const JvpReport report = jvpcheck(two_outputs({.forward = 1 + 1e-9}), two_inputs(), {}, {"a", "b"});
    BOOST_TEST(report.tangents[0].outputs[0].passed);
    BOOST_TEST(!report.tangents[0].adjoint[0].passed);
}

// The losses of the H v checks use ops whose backward rules have forward rules themselves
// (forward-over-reverse runs the backward with tangents).
BOOST_AUTO_TEST_CASE(hvpcheck_agrees_with_central_differences_of_gradients) {
    const LossFunction<double> loss = [](const std::vector<Tensor<double>>& in) {
        return sum(in[0] * in[1] * square(in[0]) + in[1] * in[1]);
    };
    const GradcheckReport report = hvpcheck(loss, two_inputs(), {}, {"a", "b"});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST_REQUIRE(report.inputs.size() == 2u);
    BOOST_TEST(report.inputs[1].name == "b");
}

BOOST_AUTO_TEST_CASE(hvpcheck_catches_a_backward_right_in_value_with_a_wrong_derivative) {
    const LossFunction<double> loss = [](const std::vector<Tensor<double>>& in) {
        return sum(in[0] * in[1] * square(in[0], {.frozen_backward = true}) + in[1] * in[1]);
    };
    const GradcheckReport report = hvpcheck(loss, two_inputs(), {}, {"a", "b"});
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST(!report.passed);
    BOOST_TEST(!report.inputs[0].passed);  // the row of a, whose square() has the slip
    // The first-order check cannot see it.
    BOOST_TEST(gradcheck([&](const std::vector<Tensor<double>>& in) { return loss(in); }, two_inputs()).passed);
}

BOOST_AUTO_TEST_CASE(hvp_leaves_keeps_the_product_of_two_leaves_whose_gradients_are_one_tensor) {
    // add's backward hands a and b the same gradient tensor (as bias_ih and bias_hh of a layer):
    // both rows of H v must survive taking the tangents off the gradients.
    const std::vector<Tensor<double>> leaves = two_inputs();
    const Tensor<double> weights = random_tensor({3, 2}, 3, 1.0, /*requires_grad=*/false);
    const GradcheckReport report = hvpcheck_leaves(
        [&] {
            // a and b reach the loss through one add only (as bias_ih + bias_hh in a cell), whose
            // backward hands both the same tensor.
            const Tensor<double> c = leaves[0] + leaves[1];
            return sum(c * c * weights);
        },
        leaves, {}, {"a", "b"});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST(report.inputs[1].max_abs_error < 1e-6);
}

BOOST_AUTO_TEST_CASE(hvpcheck_leaves_checks_leaves_a_closure_reads) {
    const std::vector<Tensor<double>> leaves = two_inputs();
    const GradcheckReport report =
        hvpcheck_leaves([&] { return sum(leaves[0] * leaves[1] * leaves[0]); }, leaves, {}, {"a", "b"});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST(!leaves[0].has_tangent());  // cleared after the call
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

// tanh whose backward g (1 - y^2) reads y as a constant: right in value, so every first-order
// check passes, but its derivative with respect to the input is lost (the classic slip of a
// hand-written backward that saves its output as a plain array).
Tensor<double> tanh_with_frozen_backward(const Tensor<double>& z) {
    const xt::xarray<double> y = xt::tanh(z.value());
    return record_op<double>(
        "tanh_with_frozen_backward", {z}, y,
        [y](const BackwardContext<double>& ctx) -> Gradients<double> {
            const Tensor<double> frozen(y);
            return {ctx.grad_output(0) * (1.0 - frozen * frozen)};
        },
        [y](const ForwardContext<double>& ctx) -> std::vector<Tensor<double>> {
            const Tensor<double> frozen(y);
            return {ctx.tangent(0) * (1.0 - frozen * frozen)};
        });
}

class FrozenTanhCell : public RecurrentCell<double> {
public:
    FrozenTanhCell(std::size_t input_size, std::size_t hidden_size, Generator& generator)
        : RecurrentCell<double>(input_size, hidden_size) {
        weight_ih_ = register_parameter("weight_ih", Tensor<double>(init::uniform<double>({hidden_size, input_size}, -0.6, 0.6, generator)));
        weight_hh_ = register_parameter("weight_hh", Tensor<double>(init::uniform<double>({hidden_size, hidden_size}, -0.6, 0.6, generator)));
        bias_ = register_parameter("bias", Tensor<double>(init::uniform<double>({hidden_size}, -0.2, 0.2, generator)));
    }
    State<double> step(const Tensor<double>& x_t, const State<double>& state) const override {
        return {tanh_with_frozen_backward(gemm(x_t, weight_ih_, false, true) + bias_ + gemm(state[0], weight_hh_, false, true))};
    }

private:
    Tensor<double> weight_ih_, weight_hh_, bias_;
};

std::shared_ptr<Recurrent<double>> frozen_tanh_layer() {
    return std::make_shared<Recurrent<double>>(
        [](const CellSite& site, Generator& generator) {
            return std::make_shared<FrozenTanhCell>(site.input_size, site.hidden_size, generator);
        },
        RecurrentOptions{.input_size = 2, .hidden_size = 3, .seed = 7});
}

}  // namespace

BOOST_AUTO_TEST_SUITE(layer_second_order_checks)

BOOST_AUTO_TEST_CASE(every_step_of_stacked_bidirectional_layers_with_lengths_agrees_to_second_order_on_the_generic_path) {
    const std::vector<std::int64_t> lengths{4, 2};
    for (const std::string cell : {"rnn_tanh", "lstm", "gru"}) {
        auto layer = make_recurrent<double>(cell, {.input_size = 2, .hidden_size = 3, .num_layers = 2, .bidirectional = true,
                                                   .path = ExecutionPath::generic, .seed = 3});
        const Tensor<double> x = random_tensor({4, 2, 2}, 5, 0.5, /*requires_grad=*/false);
        const PerStepReport report = gradgradcheck_layer_per_step(*layer, x, {}, lengths);
        BOOST_TEST_CONTEXT(cell << "\n" << report.to_string()) {
            BOOST_TEST(report.passed);
            BOOST_TEST(report.quantity == 'G');
            BOOST_TEST_REQUIRE(report.steps.size() == 4u);
            BOOST_TEST(report.steps[0].hidden.size() == 4u);
            BOOST_TEST(report.to_string().find("dG/dx_t") != std::string::npos);
        }
    }
}

BOOST_AUTO_TEST_CASE(the_whole_layer_agrees_to_second_order_in_every_parameter_and_initial_state) {
    auto layer = make_lstm<double>({.input_size = 2, .hidden_size = 2, .path = ExecutionPath::generic, .seed = 4});
    const GradcheckReport report = gradgradcheck_layer(*layer, random_tensor({3, 2, 2}, 6), {random_tensor({1, 2, 2}, 7),
                                                                                              random_tensor({1, 2, 2}, 8)});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST(report.inputs.size() == 7u);  // 4 parameters, x, h0, c0
}

BOOST_AUTO_TEST_CASE(a_backward_that_saves_its_output_as_a_constant_passes_first_order_and_fails_second_order_at_every_step) {
    auto layer = frozen_tanh_layer();
    const Tensor<double> x = random_tensor({5, 2, 2}, 9, 1.0, /*requires_grad=*/false);
    BOOST_TEST(gradcheck_layer_per_step(*layer, x).passed);
    const PerStepReport report = gradgradcheck_layer_per_step(*layer, x);
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST(!report.passed);
    BOOST_TEST_REQUIRE(report.first_disagreeing_step.has_value());
    BOOST_TEST(*report.first_disagreeing_step == 4u);  // wrong at every step: the last one is met first
    BOOST_TEST(report.to_string().find("so the second-order rule (the derivative of the backward) of step 4 itself is wrong") !=
               std::string::npos);
    BOOST_TEST(!gradgradcheck_layer(*layer, random_tensor({5, 2, 2}, 9, 1.0)).passed);
}

BOOST_AUTO_TEST_CASE(every_built_in_cell_holds_the_adjoint_identity_and_its_hvp_on_both_paths) {
    const std::vector<std::int64_t> lengths{3, 1};
    for (const std::string cell : {"rnn_tanh", "rnn_relu", "lstm", "gru"})
        for (const ExecutionPath path : {ExecutionPath::generic, ExecutionPath::fused}) {
            auto layer = make_recurrent<double>(cell, {.input_size = 2, .hidden_size = 2, .bidirectional = true, .path = path,
                                                       .seed = 11});
            const Tensor<double> x = random_tensor({3, 2, 2}, 12);
            std::vector<Tensor<double>> initial;
            for (std::size_t s = 0; s < layer->state_names().size(); ++s) initial.push_back(random_tensor({2, 2, 2}, 13 + s));
            const JvpReport jvp = jvpcheck_layer(*layer, x, initial, lengths);
            BOOST_TEST_CONTEXT(cell << (path == ExecutionPath::fused ? ", fused" : ", generic") << "\n" << jvp.to_string()) {
                BOOST_TEST(layer->uses_fused() == (path == ExecutionPath::fused));
                BOOST_TEST(jvp.passed);
                BOOST_TEST(jvp.max_adjoint_error <= 1e-12);
                BOOST_TEST(jvp.tangents.size() == 2u * 4u + 1u + initial.size());  // parameters, x, initial states
                BOOST_TEST(jvp.tangents[0].outputs.size() == 1u + initial.size());  // output, h_n (, c_n)
                const GradcheckReport hvp = hvpcheck_layer(*layer, x, initial, lengths);
                BOOST_TEST(hvp.passed, hvp.to_string());
            }
        }
}

BOOST_AUTO_TEST_SUITE_END()
