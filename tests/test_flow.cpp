// nn::gradient_flow: vanishing and exploding gradients asserted (issue 11, example 2), the
// power-iteration singular values checked against the explicit Jacobian, gate saturation, and
// clipping bounding the norm.

#include <cmath>

#include <rewind/nn/analysis/gradient_flow.hpp>
#include <rewind/nn/train/clip.hpp>

using namespace rw;
using namespace rw::nn;

namespace {

Tensor<double> random_input(std::size_t steps, std::size_t batch, std::size_t input_size, double scale,
                            std::uint64_t seed = 3) {
    Generator generator(seed);
    xt::xarray<double> value = xt::xarray<double>::from_shape({steps, batch, input_size});
    for (double& v : value) v = generator.uniform(-scale, scale);
    return Tensor<double>(std::move(value));
}

// A tanh RNN whose W_hh is orthogonal times `sigma`: every singular value equals sigma.
std::shared_ptr<Recurrent<double>> scaled_rnn(double sigma, std::size_t input_size = 4, std::size_t hidden = 16) {
    auto rnn = make_rnn<double>(
        {.input_size = input_size, .hidden_size = hidden, .seed = 11, .init = {.orthogonal_recurrent = true}});
    xt::xarray<double>& w = rnn->parameter("weight_hh_l0").mutable_value();
    w *= sigma / largest_singular_value(w);
    return rnn;
}

// dh_T/dh_t written out row by row (one backward per unit of h_T, batch of one) and its largest
// singular value: what the power iteration on Jacobian-vector products must find.
double explicit_jacobian_sigma(Recurrent<double>& layer, const Tensor<double>& input, std::size_t t) {
    std::vector<Tensor<double>> hidden(input.size(0));
    layer.set_step_observer([&](std::size_t, std::size_t, std::size_t step, const Tensor<double>& h) { hidden[step] = h; });
    layer.forward(input);
    layer.set_step_observer(nullptr);
    const std::size_t size = layer.options().hidden_size;
    xt::xarray<double> jacobian = xt::zeros<double>({size, size});
    for (std::size_t i = 0; i < size; ++i) {
        xt::xarray<double> seed = xt::zeros<double>({std::size_t(1), size});
        seed(0, i) = 1;
        const auto row = grad<double>({hidden.back()}, {hidden[t]}, {Tensor<double>(seed)}, {.retain_graph = true})[0];
        xt::view(jacobian, i) = xt::view(row.value(), 0);
    }
    return largest_singular_value(jacobian);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(gradient_flow_over_time)

BOOST_AUTO_TEST_CASE(largest_singular_value_of_a_known_matrix) {
    const xt::xarray<double> m{{3.0, 0.0, 0.0}, {0.0, -5.0, 0.0}};
    BOOST_TEST(largest_singular_value(m) == 5.0, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(largest_singular_value(xt::xarray<double>(xt::zeros<double>({2, 2}))) == 0.0);
}

BOOST_AUTO_TEST_CASE(tanh_rnn_with_sigma_half_vanishes_geometrically) {
    auto rnn = scaled_rnn(0.5);
    const std::size_t steps = 40;
    const FlowReport report = gradient_flow(*rnn, random_input(steps, 4, 4, 1.0), {.singular_value_steps = 0});
    const auto& norm = report.top().grad_norm;
    BOOST_TEST(report.top().weight_hh_sigma_max == 0.5, boost::test_tools::tolerance(1e-9));
    // Each step back multiplies by W_hh^T diag(1 - h^2): at most sigma_max = 0.5, since tanh' <= 1.
    for (std::size_t t = 1; t < steps; ++t) BOOST_TEST(norm[t - 1] <= 0.5 * norm[t] * (1 + 1e-12));
    BOOST_TEST(norm[0] < 1e-11 * norm[steps - 1]);
    BOOST_TEST(report.decay_per_step < 0.5);
    BOOST_TEST(report.decay_per_step > 0.2);
}

BOOST_AUTO_TEST_CASE(tanh_rnn_with_sigma_one_and_a_half_and_small_inputs_explodes) {
    // Small inputs keep the pre-activations near 0, so tanh' is near 1 and each step back
    // multiplies the norm by nearly 1.5 (all singular values of W_hh are 1.5).
    auto rnn = scaled_rnn(1.5);
    const std::size_t steps = 30;
    const FlowReport report = gradient_flow(*rnn, random_input(steps, 4, 4, 1e-9), {.singular_value_steps = 0});
    const auto& norm = report.top().grad_norm;
    for (std::size_t t = 1; t < steps; ++t) BOOST_TEST(norm[t - 1] > 1.45 * norm[t]);
    BOOST_TEST(norm[0] > 1e5 * norm[steps - 1]);
    BOOST_TEST(report.decay_per_step == 1.5, boost::test_tools::tolerance(0.01));
}

BOOST_AUTO_TEST_CASE(lstm_with_forget_bias_three_keeps_the_norm_near_constant_over_a_thousand_steps) {
    // The gradient reaches back through c_t = f_t c_(t-1) + ...: with the forget gates near 1 it
    // neither vanishes nor explodes (across seeds at H = 32 the fitted factor is 0.99 to 1.01).
    const std::size_t steps = 1000;
    const Tensor<double> input = random_input(steps, 8, 4, 1.0);
    auto remembering = make_lstm<double>({.input_size = 4, .hidden_size = 32, .seed = 1, .init = {.forget_bias = 3}});
    const FlowReport report = gradient_flow(*remembering, input, {.singular_value_steps = 0});
    const auto& norm = report.top().grad_norm;
    BOOST_TEST_MESSAGE("forget bias 3: decay per step " << report.decay_per_step << ", ||dL/dh_t|| at T-2 "
                                                        << norm[steps - 2] << ", at 0 " << norm[0]);
    BOOST_TEST(report.decay_per_step > 0.99);
    BOOST_TEST(report.decay_per_step < 1.01);
    for (std::size_t t = 0; t + 1 < steps; ++t) {
        BOOST_TEST(norm[t] > 1e-2 * norm[steps - 2]);
        BOOST_TEST(norm[t] < 1e2 * norm[steps - 2]);
    }
    // Without the bias the forget gates sit near 1/2 and the same gradient is gone within 100 steps.
    auto forgetting = make_lstm<double>({.input_size = 4, .hidden_size = 32, .seed = 1});
    const FlowReport baseline = gradient_flow(*forgetting, input, {.singular_value_steps = 0});
    BOOST_TEST_MESSAGE("forget bias 0: decay per step " << baseline.decay_per_step);
    BOOST_TEST(baseline.decay_per_step < 0.8);
    BOOST_TEST(baseline.top().grad_norm[steps - 101] < 1e-8 * baseline.top().grad_norm[steps - 2]);
}

BOOST_AUTO_TEST_CASE(clipping_bounds_the_exploding_gradient_norm) {
    auto rnn = scaled_rnn(1.5);
    const FlowReport report =
        gradient_flow(*rnn, random_input(30, 4, 4, 1e-9), {.singular_value_steps = 0, .max_norm = 1.0});
    BOOST_TEST(report.parameter_grad_norm > 1e3);
    BOOST_TEST(report.clipped_grad_norm == 1.0, boost::test_tools::tolerance(1e-6));
    double squares = 0;  // what the layer's .grad now holds
    for (const auto& p : rnn->parameters()) squares += xt::sum(p.grad().value() * p.grad().value())();
    BOOST_TEST(std::sqrt(squares) == 1.0, boost::test_tools::tolerance(1e-6));
}

BOOST_AUTO_TEST_CASE(power_iteration_finds_the_explicit_jacobians_largest_singular_value) {
    for (const std::string cell : {"rnn_tanh", "lstm", "gru"}) {
        auto layer = make_recurrent<double>(cell, {.input_size = 3, .hidden_size = 6, .seed = 2});
        const Tensor<double> input = random_input(12, 1, 3, 1.0);
        const FlowReport report = gradient_flow(*layer, input, {.singular_value_steps = 4, .power_iterations = 200});
        std::size_t analysed = 0;
        for (std::size_t t = 0; t < 12; ++t) {
            if (std::isnan(report.singular_value[t])) continue;
            ++analysed;
            BOOST_TEST_CONTEXT(cell << " step " << t) {
                BOOST_TEST(report.singular_value[t] == explicit_jacobian_sigma(*layer, input, t),
                           boost::test_tools::tolerance(1e-6));
            }
        }
        BOOST_TEST(analysed == 4u);
        BOOST_TEST(report.singular_value[11] == 1.0, boost::test_tools::tolerance(1e-12));  // dh_T/dh_T = I
    }
}

BOOST_AUTO_TEST_CASE(singular_values_of_a_batch_are_the_largest_over_its_sequences) {
    auto layer = make_gru<double>({.input_size = 3, .hidden_size = 5, .seed = 4});
    const Tensor<double> input = random_input(8, 3, 3, 1.0);
    const FlowReport report = gradient_flow(*layer, input, {.singular_value_steps = 2, .power_iterations = 200});
    double largest = 0;
    for (std::size_t b = 0; b < 3; ++b) {
        const Tensor<double> one(xt::xarray<double>(xt::view(input.value(), xt::all(), xt::range(b, b + 1), xt::all())));
        largest = std::max(largest, explicit_jacobian_sigma(*layer, one, 0));
    }
    BOOST_TEST(report.singular_value[0] == largest, boost::test_tools::tolerance(1e-6));
}

BOOST_AUTO_TEST_CASE(gate_saturation_counts_gates_near_their_limits) {
    const Tensor<double> input = random_input(10, 2, 3, 1.0);
    auto open = make_lstm<double>({.input_size = 3, .hidden_size = 8, .seed = 6, .init = {.forget_bias = 20}});
    const FlowReport saturated = gradient_flow(*open, input, {.singular_value_steps = 0});
    BOOST_TEST_REQUIRE(saturated.top().gates.size() == 4u);
    BOOST_TEST(saturated.top().gates[1].gate == "forget");
    BOOST_TEST(saturated.top().gates[1].overall == 1.0);  // sigmoid(20 +- 1) > 0.99 everywhere
    BOOST_TEST(saturated.top().gates[0].overall < 0.05);
    auto plain = make_lstm<double>({.input_size = 3, .hidden_size = 8, .seed = 6});
    BOOST_TEST(gradient_flow(*plain, input, {.singular_value_steps = 0}).top().gates[1].overall == 0.0);
    auto gru = make_gru<double>({.input_size = 3, .hidden_size = 8, .num_layers = 2, .seed = 6});
    const FlowReport two_layers = gradient_flow(*gru, input, {.singular_value_steps = 0});
    BOOST_TEST(two_layers.layers.size() == 2u);
    BOOST_TEST(two_layers.layers[0].gates.size() == 3u);
    BOOST_TEST(two_layers.layers[1].gates[2].gate == "new");
    BOOST_TEST(two_layers.layers[1].gates[2].per_step.size() == 10u);
    BOOST_TEST(scaled_rnn(1.0)->cell(0, 0).kind() == "rnn_tanh");
    BOOST_TEST(gradient_flow(*scaled_rnn(1.0), random_input(5, 1, 4, 1.0), {.singular_value_steps = 0}).top().gates.empty());
}

BOOST_AUTO_TEST_CASE(a_loss_over_every_step_reaches_every_step_directly) {
    auto rnn = scaled_rnn(0.5);
    const FlowReport report =
        gradient_flow(*rnn, random_input(40, 4, 4, 1.0), {.loss = FlowLoss::every_step, .singular_value_steps = 0});
    // Each step has its own term in the loss, so nothing vanishes: the norm stays within a few x.
    const auto& norm = report.top().grad_norm;
    BOOST_TEST(*std::min_element(norm.begin(), norm.end()) > 0.1 * *std::max_element(norm.begin(), norm.end()));
}

BOOST_AUTO_TEST_CASE(a_bidirectional_layer_is_refused_with_a_reason) {
    auto layer = make_gru<double>({.input_size = 3, .hidden_size = 4, .bidirectional = true});
    BOOST_CHECK_EXCEPTION(gradient_flow(*layer, random_input(4, 1, 3, 1.0)), std::invalid_argument,
                          [](const std::invalid_argument& e) { return std::string(e.what()).find("bidirectional") != std::string::npos; });
}

BOOST_AUTO_TEST_SUITE_END()
