// Training: the update rules: optimizers (by hand and against torch.optim fixtures), non-finite gradients, clipping, learning-rate schedules (nn/src/train/optim.cpp, clip.cpp, schedule.cpp).

#include <boost/test/unit_test.hpp>

#include "training_checks.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::training_checks;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(training)

// ---- optimizers by hand: p = 1, gradients 1 then 2 ----

BOOST_AUTO_TEST_CASE(sgd_momentum_and_weight_decay_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    SGD<double> sgd({{"p", p}}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
    p.set_grad(Tensor<double>(Array{1.0}));
    sgd.step();  // d = 1 + 0.1 * 1 = 1.1 = buffer;  p = 1 - 0.11
    BOOST_TEST(p.value()(0) == 0.89, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    sgd.step();  // d = 2 + 0.089 = 2.089;  buffer = 0.9 * 1.1 + 2.089 = 3.079;  p = 0.89 - 0.3079
    BOOST_TEST(p.value()(0) == 0.5821, tt::tolerance(1e-15));

    Tensor<double> q = leaf({1.0});
    SGD<double> nesterov({{"q", q}}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
    q.set_grad(Tensor<double>(Array{1.0}));
    nesterov.step();  // buffer = 1;  d = 1 + 0.9 * 1;  q = 1 - 0.19
    BOOST_TEST(q.value()(0) == 0.81, tt::tolerance(1e-15));
    q.set_grad(Tensor<double>(Array{2.0}));
    nesterov.step();  // buffer = 0.9 + 2 = 2.9;  d = 2 + 0.9 * 2.9 = 4.61;  q = 0.81 - 0.461
    BOOST_TEST(q.value()(0) == 0.349, tt::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(adam_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    Adam<double> adam({{"p", p}}, AdamOptions{.lr = 0.1});
    p.set_grad(Tensor<double>(Array{1.0}));
    adam.step();  // m = 0.1, v = 0.001: both bias-corrected to 1, so p = 1 - 0.1 / (1 + 1e-8)
    const double p1 = 1 - 0.1 / (1 + 1e-8);
    BOOST_TEST(p.value()(0) == p1, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    adam.step();
    const double m = 0.9 * 0.1 + 0.1 * 2, v = 0.999 * 0.001 + 0.001 * 4;
    const double p2 = p1 - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.998001)) + 1e-8);
    BOOST_TEST(p.value()(0) == p2, tt::tolerance(1e-14));
    BOOST_TEST(adam.step_count(0) == 2);
}

BOOST_AUTO_TEST_CASE(adamw_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    AdamWOptions options;
    options.lr = 0.1, options.weight_decay = 0.5;
    AdamW<double> adamw({{"p", p}}, options);
    p.set_grad(Tensor<double>(Array{1.0}));
    adamw.step();  // decay first: p = 1 * (1 - 0.05), then the Adam step of 0.1 / (1 + 1e-8)
    const double p1 = 0.95 - 0.1 / (1 + 1e-8);
    BOOST_TEST(p.value()(0) == p1, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    adamw.step();
    const double m = 0.9 * 0.1 + 0.1 * 2, v = 0.999 * 0.001 + 0.001 * 4;
    const double p2 = p1 * 0.95 - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.998001)) + 1e-8);
    BOOST_TEST(p.value()(0) == p2, tt::tolerance(1e-14));
}

// ---- optimizers against torch.optim on the same gradients ----

BOOST_AUTO_TEST_CASE(sgd_matches_pytorch) {
    for (const char* name : {"sgd_plain", "sgd_momentum", "sgd_nesterov", "sgd_weight_decay"}) check_against_pytorch(name);
}

BOOST_AUTO_TEST_CASE(adam_matches_pytorch) {
    check_against_pytorch("adam");
    check_against_pytorch("adam_weight_decay");
}

BOOST_AUTO_TEST_CASE(adamw_matches_pytorch) { check_against_pytorch("adamw"); }

// ---- non-finite gradients ----

BOOST_AUTO_TEST_CASE(optimizer_refuses_a_non_finite_gradient_naming_the_parameter) {
    Tensor<double> a = leaf({1.0, 2.0}), b = leaf({3.0});
    Adam<double> adam({{"a", a}, {"layer.b", b}}, AdamOptions{.lr = 0.1});
    a.set_grad(Tensor<double>(Array{1.0, 1.0}));
    b.set_grad(Tensor<double>(Array{std::numeric_limits<double>::quiet_NaN()}));
    BOOST_CHECK_EXCEPTION(adam.step(), NonFiniteError, [](const NonFiniteError& error) {
        return std::string(error.what()).find("'layer.b'") != std::string::npos;
    });
    // Nothing was written, not even to the parameter whose gradient was fine.
    BOOST_CHECK(a.value() == (Array{1.0, 2.0}));
    BOOST_TEST(b.value()(0) == 3.0);
    BOOST_TEST(adam.step_count(0) == 0);
}

BOOST_AUTO_TEST_CASE(skip_policy_skips_the_step_and_reports_it) {
    Tensor<double> a = leaf({1.0});
    SGD<double> sgd({{"a", a}}, {.lr = 0.1, .momentum = 0.9, .non_finite = NonFinitePolicy::skip});
    a.set_grad(Tensor<double>(Array{std::numeric_limits<double>::infinity()}));
    const StepReport report = sgd.step();
    BOOST_TEST(!report.applied);
    BOOST_TEST(report.skipped_parameter == "a");
    BOOST_TEST(sgd.skipped_steps() == 1u);
    BOOST_TEST(a.value()(0) == 1.0);
    BOOST_TEST(sgd.state().tensors.empty());  // no momentum buffer was created
    a.set_grad(Tensor<double>(Array{1.0}));
    BOOST_TEST(sgd.step().applied);
    BOOST_TEST(a.value()(0) == 0.9, tt::tolerance(1e-15));
}

// ---- clipping ----

BOOST_AUTO_TEST_CASE(clip_grad_norm_returns_the_global_norm_and_keeps_the_direction) {
    Tensor<double> a = leaf({0.0, 0.0}), b = leaf({0.0});
    a.set_grad(Tensor<double>(Array{3.0, 4.0}));
    b.set_grad(Tensor<double>(Array{12.0}));
    const double norm = clip_grad_norm(NamedTensors<double>{{"a", a}, {"b", b}}, 6.5);
    BOOST_TEST(norm == 13.0);  // sqrt(9 + 16 + 144), exactly
    const double scale = 6.5 / (13.0 + 1e-6);
    BOOST_TEST(max_abs_difference(a.grad().value(), Array{3.0 * scale, 4.0 * scale}) <= 1e-15);
    BOOST_TEST(max_abs_difference(b.grad().value(), Array{12.0 * scale}) <= 1e-15);
    // Below the limit nothing changes.
    BOOST_TEST(clip_grad_norm(std::vector<Tensor<double>>{a, b}, 100.0) == 6.5 * 13.0 / (13.0 + 1e-6), tt::tolerance(1e-15));
    BOOST_TEST(b.grad().value()(0) == 12.0 * scale);
}

BOOST_AUTO_TEST_CASE(clip_grad_value_clamps_each_element) {
    Tensor<double> a = leaf({0.0, 0.0, 0.0, 0.0});
    a.set_grad(Tensor<double>(Array{-3.0, -0.5, 0.25, 7.0}));
    clip_grad_value(std::vector<Tensor<double>>{a}, 1.0);
    BOOST_CHECK(a.grad().value() == (Array{-1.0, -0.5, 0.25, 1.0}));
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_reports_a_non_finite_norm_and_leaves_gradients_alone) {
    Tensor<double> a = leaf({0.0, 0.0}), b = leaf({0.0});
    a.set_grad(Tensor<double>(Array{3.0, 4.0}));
    for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        b.set_grad(Tensor<double>(Array{bad}));
        const NamedTensors<double> named{{"a", a}, {"b", b}};
        BOOST_TEST(!std::isfinite(clip_grad_norm(named, 1.0)));
        BOOST_CHECK(a.grad().value() == (Array{3.0, 4.0}));  // not scaled into NaN
        BOOST_CHECK_EXCEPTION(clip_grad_norm(named, 1.0, true), NonFiniteError, [](const NonFiniteError& error) {
            return std::string(error.what()).find("'b'") != std::string::npos;
        });
    }
}

// ---- schedules (PyTorch's values) ----

BOOST_AUTO_TEST_CASE(step_decay_and_cosine_annealing_follow_pytorch) {
    Tensor<double> p = leaf({0.0});
    SGD<double> sgd({{"p", p}}, {.lr = 1.0});
    StepDecay decay(sgd, 2, 0.5);
    std::vector<double> rates;
    for (int e = 0; e < 5; ++e) decay.step(), rates.push_back(sgd.lr());
    BOOST_TEST(rates == (std::vector<double>{1.0, 0.5, 0.5, 0.25, 0.25}), tt::per_element());

    SGD<double> other({{"p", p}}, {.lr = 1.0});
    CosineAnnealing cosine(other, 4, 0.0);
    const double expected[] = {0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.14644660940672627};
    for (double rate : expected) {
        cosine.step();
        BOOST_TEST(other.lr() == rate, tt::tolerance(1e-12));
    }
}

BOOST_AUTO_TEST_CASE(reduce_on_plateau_waits_patience_epochs_and_state_round_trips) {
    Tensor<double> p = leaf({0.0});
    SGD<double> sgd({{"p", p}}, {.lr = 1.0});
    ReduceOnPlateau plateau(sgd, {.factor = 0.5, .patience = 2, .cooldown = 1});
    // 1.0 improves on inf; 0.99995 is within the relative threshold 1e-4, so it is a bad epoch.
    // After the reduction at epoch 3 the cooldown swallows one bad epoch.
    const std::vector<double> metrics{1.0, 0.99995, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
    const std::vector<double> rates{1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25};
    for (std::size_t e = 0; e < metrics.size(); ++e) {
        plateau.step(metrics[e]);
        BOOST_TEST(sgd.lr() == rates[e], "epoch " << e);
    }
    BOOST_TEST(plateau.best() == 1.0);
    SGD<double> fresh_sgd({{"p", p}}, {.lr = 0.25});
    ReduceOnPlateau fresh(fresh_sgd, {.factor = 0.5, .patience = 2, .cooldown = 1});
    fresh.load_state(plateau.state(), "test");
    BOOST_CHECK(fresh.state() == plateau.state());
    StepDecay decay(fresh_sgd, 3);
    BOOST_CHECK_THROW(fresh.load_state(decay.state(), "test"), SafetensorsError);  // another kind
}

BOOST_AUTO_TEST_SUITE_END()
