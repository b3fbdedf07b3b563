// nn::gradcheck_layer_per_step: dL/dx_t and dL/dh_t checked step by step, and a wrong backward
// planted in a user's cell located at the step where it enters (issue 11, tool 2).

#include <cmath>

#include <rewind/autograd/function.hpp>
#include <rewind/nn/layers/init.hpp>
#include <rewind/nn/layers/layer_check.hpp>

using namespace rw;
using namespace rw::nn;

namespace {

Tensor<double> small_input(std::size_t steps, std::size_t batch, std::size_t input_size, std::uint64_t seed = 5) {
    Generator generator(seed);
    xt::xarray<double> value = xt::xarray<double>::from_shape({steps, batch, input_size});
    for (double& v : value) v = generator.uniform(-0.3, 0.3);
    return Tensor<double>(std::move(value));
}

// clip(z, -limit, limit) through the public custom-op API, with the classic slip in its backward:
// the gradient passes unchanged, also where z was clipped and the derivative is 0. It only matters
// at steps where |z| exceeds the limit.
Tensor<double> clip_with_wrong_backward(const Tensor<double>& z, double limit) {
    return record_op<double>("clip_with_wrong_backward", {z}, xt::xarray<double>(xt::clip(z.value(), -limit, limit)),
                             [](const BackwardContext<double>& context) -> Gradients<double> {
                                 return {context.grad_output(0)};
                             });
}

// Where the faulty clip sits in a user's cell.
enum class Fault {
    on_output,  // h' = clip(W_ih x + b + W_hh h, 1): wrong where a large input drives z past 1
    on_state,   // h' = tanh(W_ih x + b + W_hh clip(h, 0.9)): wrong where the previous h passed 0.9
};

// Small weights keep every |z| and |h| well inside the limits unless the input is large.
class FaultyCell : public RecurrentCell<double> {
public:
    FaultyCell(std::size_t input_size, std::size_t hidden_size, Generator& generator, Fault fault)
        : RecurrentCell<double>(input_size, hidden_size), fault_(fault) {
        weight_ih_ = register_parameter("weight_ih", Tensor<double>(init::uniform<double>({hidden_size, input_size}, -0.5, 0.5, generator)));
        weight_hh_ = register_parameter("weight_hh", Tensor<double>(init::uniform<double>({hidden_size, hidden_size}, -0.1, 0.1, generator)));
        bias_ = register_parameter("bias", Tensor<double>(init::uniform<double>({hidden_size}, -0.1, 0.1, generator)));
    }
    State<double> step(const Tensor<double>& x_t, const State<double>& state) const override {
        const Tensor<double> input = gemm(x_t, weight_ih_, false, true) + bias_;
        if (fault_ == Fault::on_output) return {clip_with_wrong_backward(input + gemm(state[0], weight_hh_, false, true), 1.0)};
        return {tanh(input + gemm(clip_with_wrong_backward(state[0], 0.9), weight_hh_, false, true))};
    }

private:
    Fault fault_;
    Tensor<double> weight_ih_, weight_hh_, bias_;
};

std::shared_ptr<Recurrent<double>> faulty_layer(Fault fault, bool bidirectional = false) {
    return std::make_shared<Recurrent<double>>(
        [fault](const CellSite& site, Generator& generator) {
            return std::make_shared<FaultyCell>(site.input_size, site.hidden_size, generator, fault);
        },
        RecurrentOptions{.input_size = 2, .hidden_size = 3, .bidirectional = bidirectional, .seed = 7});
}

// The input with every element of step `step` set to a large value.
Tensor<double> input_large_at(std::size_t step) {
    Tensor<double> x = small_input(8, 2, 2);
    xt::view(x.mutable_value(), step) = 3.0;
    return x;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(gradcheck_per_step)

BOOST_AUTO_TEST_CASE(every_step_of_the_standard_layers_agrees_on_the_generic_path) {
    const std::vector<std::int64_t> lengths{6, 3};
    for (const std::string cell : {"rnn_tanh", "lstm", "gru"}) {
        auto layer = make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                                   .path = ExecutionPath::generic, .seed = 3});
        const PerStepReport report = gradcheck_layer_per_step(*layer, small_input(6, 2, 3), {}, lengths);
        BOOST_TEST_CONTEXT(cell << "\n" << report.to_string()) {
            BOOST_TEST(report.passed);
            BOOST_TEST(!report.first_disagreeing_step.has_value());
            BOOST_TEST_REQUIRE(report.steps.size() == 6u);
            BOOST_TEST_REQUIRE(report.steps[0].hidden.size() == 4u);  // 2 layers x 2 directions
            BOOST_TEST(report.steps[0].hidden[3].name == "h_l1_reverse");
            BOOST_TEST(report.steps[0].x.shape == Shape({2, 3}));
        }
    }
}

BOOST_AUTO_TEST_CASE(a_batch_first_layer_is_checked_step_by_step_along_its_second_axis) {
    auto layer = make_gru<double>({.input_size = 3, .hidden_size = 4, .batch_first = true,
                                   .path = ExecutionPath::generic, .seed = 3});
    const PerStepReport report = gradcheck_layer_per_step(*layer, small_input(2, 5, 3));  // [B = 2, T = 5, I = 3]
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST_REQUIRE(report.steps.size() == 5u);
    BOOST_TEST(report.steps[4].x.shape == Shape({2, 3}));
    BOOST_TEST(report.steps[4].hidden.size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_fused_kernel_keeps_h_t_to_itself_so_only_x_t_is_checked) {
    auto layer = make_lstm<double>({.input_size = 3, .hidden_size = 4, .seed = 3});
    const PerStepReport report = gradcheck_layer_per_step(*layer, small_input(5, 2, 3));
    BOOST_TEST(report.passed);
    BOOST_TEST_REQUIRE(report.steps.size() == 5u);
    BOOST_TEST(report.steps[2].hidden.empty());
    BOOST_TEST(report.steps[2].x.max_abs_error < 1e-8);
}

BOOST_AUTO_TEST_CASE(a_user_cell_without_a_kernel_gets_h_t_checked_on_the_default_path) {
    auto layer = faulty_layer(Fault::on_output);  // path fused, but the cell has no kernel
    const PerStepReport report = gradcheck_layer_per_step(*layer, small_input(8, 2, 2));
    BOOST_TEST(report.passed, report.to_string());  // nothing clipped: the slip never matters
    BOOST_TEST(report.steps[0].hidden.size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_wrong_backward_that_matters_at_one_step_is_located_at_that_step) {
    auto layer = faulty_layer(Fault::on_output);
    const PerStepReport report = gradcheck_layer_per_step(*layer, input_large_at(5));
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST(!report.passed);
    BOOST_TEST_REQUIRE(report.first_disagreeing_step.has_value());
    BOOST_TEST(*report.first_disagreeing_step == 5u);
    BOOST_TEST(!report.steps[5].x.passed);     // the step's own input gradient is wrong
    BOOST_TEST(!report.steps[4].hidden[0].passed);  // and so is what it passes back to h_4
    for (std::size_t t = 6; t < 8; ++t) BOOST_TEST(report.steps[t].passed());
    BOOST_TEST(report.to_string().find("first disagreement walking back from T: step 5 (steps 6..7 agree): dL/dh_5 is "
                                       "right but dL/dx_5 wrong, so the backward of step 5 itself is wrong") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_wrong_backward_into_the_state_is_located_at_the_hidden_state_it_reaches) {
    // The large input at step 4 drives h_4 past 0.9, so step 5's clip of h_4 is where the slip
    // matters: dL/dh_4 is wrong (and through step 4, dL/dx_4), dL/dx_5 and everything later right.
    auto layer = faulty_layer(Fault::on_state);
    const PerStepReport report = gradcheck_layer_per_step(*layer, input_large_at(4));
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST_REQUIRE(report.first_disagreeing_step.has_value());
    BOOST_TEST(*report.first_disagreeing_step == 4u);
    BOOST_TEST(!report.steps[4].hidden[0].passed);
    for (std::size_t t = 5; t < 8; ++t) BOOST_TEST(report.steps[t].passed());
    BOOST_TEST(report.to_string().find("dL/dh_4 (h_l0) is wrong although dL/dh_5 and dL/dx_5 are right, so the error "
                                       "enters in the backward of step 5 into its state input h_4") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_error_seen_only_in_a_reverse_direction_is_said_to_run_forward_in_time) {
    // Both directions clip h_4 with the wrong backward; the reverse one passes the error on to
    // h_5 .. h_7 (its recursion runs forward in time), so walking back from T meets it first.
    auto layer = faulty_layer(Fault::on_state, /*bidirectional=*/true);
    const PerStepReport report = gradcheck_layer_per_step(*layer, input_large_at(4));
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST_REQUIRE(report.first_disagreeing_step.has_value());
    const StepCheck& step = report.steps[*report.first_disagreeing_step];
    BOOST_TEST(step.hidden[0].passed);   // h_l0
    BOOST_TEST(!step.hidden[1].passed);  // h_l0_reverse
    BOOST_TEST(report.to_string().find("is wrong only in h_l0_reverse, whose recursion runs forward in time") !=
               std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
