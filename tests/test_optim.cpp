// Training: the update rules: optimizers (by hand and against torch.optim fixtures), their state, constraints, non-finite gradients, clipping, learning-rate schedules (nn/src/train/optim*.cpp, optimizers.cpp, constraint.cpp, clip.cpp, schedule.cpp).

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

// Eight steps each, the state saved and loaded into a fresh optimizer after the fourth.
BOOST_AUTO_TEST_CASE(rmsprop_matches_pytorch) {
    for (const char* name : {"rmsprop", "rmsprop_momentum", "rmsprop_centered_momentum"}) check_against_pytorch(name);
}

BOOST_AUTO_TEST_CASE(adagrad_matches_pytorch) {
    check_against_pytorch("adagrad");
    check_against_pytorch("adagrad_decay");
}

BOOST_AUTO_TEST_CASE(adadelta_matches_pytorch) {
    check_against_pytorch("adadelta");
    check_against_pytorch("adadelta_weight_decay");
}

BOOST_AUTO_TEST_CASE(adamax_matches_pytorch) {
    check_against_pytorch("adamax");
    check_against_pytorch("adamax_weight_decay");
}

// Including torch 1.13's float32 mu_product (Note [NAdam in torch 1.13]).
BOOST_AUTO_TEST_CASE(nadam_matches_pytorch) {
    check_against_pytorch("nadam");
    check_against_pytorch("nadam_weight_decay");
}

// Both branches: rho_t <= 5 for the first steps (a momentum step), rectified after.
BOOST_AUTO_TEST_CASE(radam_matches_pytorch) {
    check_against_pytorch("radam");
    check_against_pytorch("radam_weight_decay");
}

BOOST_AUTO_TEST_CASE(defaults_are_pytorchs) {
    const NamedTensors<double> none;
    const std::map<std::string, double> rmsprop{{"alpha", 0.99}, {"centered", 0}, {"eps", 1e-8}, {"momentum", 0},
                                                {"weight_decay", 0}};
    BOOST_CHECK(RMSprop<double>(none).hyperparameters() == rmsprop);
    BOOST_TEST(RMSprop<double>(none).lr() == 1e-2);
    const std::map<std::string, double> adagrad{
        {"eps", 1e-10}, {"initial_accumulator_value", 0}, {"lr_decay", 0}, {"weight_decay", 0}};
    BOOST_CHECK(Adagrad<double>(none).hyperparameters() == adagrad);
    BOOST_TEST(Adagrad<double>(none).lr() == 1e-2);
    const std::map<std::string, double> adadelta{{"eps", 1e-6}, {"rho", 0.9}, {"weight_decay", 0}};
    BOOST_CHECK(Adadelta<double>(none).hyperparameters() == adadelta);
    BOOST_TEST(Adadelta<double>(none).lr() == 1.0);
    const std::map<std::string, double> adamax{{"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"weight_decay", 0}};
    BOOST_CHECK(Adamax<double>(none).hyperparameters() == adamax);
    BOOST_TEST(Adamax<double>(none).lr() == 2e-3);
    std::map<std::string, double> nadam = adamax;
    nadam["momentum_decay"] = 4e-3;
    BOOST_CHECK(NAdam<double>(none).hyperparameters() == nadam);
    BOOST_TEST(NAdam<double>(none).lr() == 2e-3);
    BOOST_CHECK(RAdam<double>(none).hyperparameters() == adamax);
    BOOST_TEST(RAdam<double>(none).lr() == 1e-3);
}

// ---- bad hyperparameters: the optimizer, the option, what was expected and what was given ----

namespace {
void check_refused(const std::function<void()>& make, const std::string& message) {
    BOOST_CHECK_EXCEPTION(make(), std::invalid_argument, [&](const std::invalid_argument& error) {
        BOOST_TEST_INFO("got: " << error.what());
        return std::string(error.what()) == message;
    });
}
}  // namespace

BOOST_AUTO_TEST_CASE(bad_hyperparameters_are_refused_naming_the_option_expected_and_got) {
    const NamedTensors<double> none;
    check_refused([&] { RMSprop<double>(none, {.alpha = -0.5}); },
                  "rmsprop: invalid option alpha: expected a value >= 0, got -0.5");
    check_refused([&] { RMSprop<double>(none, {.momentum = std::nan("")}); },
                  "rmsprop: invalid option momentum: expected a value >= 0, got nan");
    check_refused([&] { Adadelta<double>(none, {.rho = 1.5}); },
                  "adadelta: invalid option rho: expected a value in [0, 1], got 1.5");
    check_refused([&] { Adamax<double>(none, {.beta1 = 1.0}); },
                  "adamax: invalid option beta1: expected a value in [0, 1), got 1");
    check_refused([&] { NAdam<double>(none, {.momentum_decay = -1}); },
                  "nadam: invalid option momentum_decay: expected a value >= 0, got -1");
    check_refused([&] { RAdam<double>(none, {.eps = -1e-8}); }, "radam: invalid option eps: expected a value >= 0, got -1e-08");
    check_refused([&] { Adagrad<double>(none, {.lr = -0.1}); },
                  "optimizer: invalid option lr: expected a finite value >= 0, got -0.1");
    check_refused([&] { Adagrad<double>(none, {.initial_accumulator_value = -1}); },
                  "adagrad: invalid option initial_accumulator_value: expected a value >= 0, got -1");
    check_refused([&] { SGD<double>(none, {.nesterov = true}); },
                  "sgd: invalid option nesterov: expected momentum > 0 and dampening 0 with it, got momentum 0 and dampening 0");
}

// ---- state: what the base saves for every optimizer ----

BOOST_AUTO_TEST_CASE(state_holds_buffers_per_parameter_scalars_and_hyperparameters) {
    Tensor<double> w = leaf({1.0, 2.0}), b = leaf({0.5});
    NAdam<double> nadam({{"layer.w", w}, {"b", b}}, {.lr = 0.01});
    w.set_grad(Tensor<double>(Array{0.1, -0.2}));  // b has no gradient: no state
    nadam.step();
    const OptimizerState state = nadam.state();
    BOOST_TEST(state.scalars.at("kind") == "nadam");
    BOOST_TEST(state.scalars.at("hyper.momentum_decay") == "0.004");
    BOOST_TEST(state.scalars.count("state.layer.w.mu_product") == 1u);
    std::set<std::string> tensors;
    for (const auto& entry : state.tensors) tensors.insert(entry.first);
    BOOST_CHECK(tensors == (std::set<std::string>{"layer.w.exp_avg", "layer.w.exp_avg_sq", "layer.w.step"}));
}

BOOST_AUTO_TEST_CASE(load_state_refuses_tampered_entries_and_leaves_the_optimizer_unchanged) {
    Tensor<double> w = leaf({1.0, 2.0});
    RMSprop<double> rmsprop({{"w", w}}, {.momentum = 0.9, .centered = true});
    w.set_grad(Tensor<double>(Array{0.1, -0.2}));
    rmsprop.step();
    const OptimizerState good = rmsprop.state();
    auto refused = [&](OptimizerState bad, const std::string& expected) {
        BOOST_CHECK_EXCEPTION(rmsprop.load_state(bad, "ckpt"), SafetensorsError, [&](const SafetensorsError& error) {
            BOOST_TEST_INFO("got: " << error.what());
            return std::string(error.what()).find(expected) != std::string::npos;
        });
        BOOST_CHECK(rmsprop.state().tensors == good.tensors);
        BOOST_CHECK(rmsprop.state().scalars == good.scalars);
    };
    OptimizerState bad = good;
    bad.tensors["w.square_avg"] = xt::xarray<double>({1.0, 2.0, 3.0});
    refused(bad, "tensor 'w.square_avg' has shape [3], the parameter [2]");
    bad = good;
    bad.tensors["v.step"] = xt::xarray<std::int64_t>({1});
    refused(bad, "unexpected tensor 'v.step'");
    bad = good;
    bad.scalars["hyper.alpha"] = "1e400";
    refused(bad, "'hyper.alpha' is not a number");
    bad = good;
    bad.scalars["hyper.centered"] = "0.5";
    refused(bad, "rmsprop: invalid option centered: expected 0 or 1, got 0.5");
    bad = good;
    bad.scalars["kind"] = "adam";
    refused(bad, "saved by 'adam', loading into 'rmsprop'");
    bad = good;
    bad.scalars.erase("hyper.eps");
    refused(bad, "'hyper.eps' is missing");
}

BOOST_AUTO_TEST_CASE(loaded_hyperparameters_replace_the_constructed_ones) {
    Tensor<double> w = leaf({1.0});
    Adagrad<double> saved({{"w", w}}, {.lr = 0.5, .lr_decay = 0.25, .eps = 1e-3});
    Adagrad<double> fresh({{"w", w}}, {});
    fresh.load_state(saved.state(), "test");
    BOOST_CHECK(fresh.hyperparameters() == saved.hyperparameters());
    BOOST_TEST(fresh.lr() == 0.5);
}

// ---- constraints: projections after the update, outside the gradient ----

BOOST_AUTO_TEST_CASE(clamp_constraint_projects_after_each_step_and_leaves_the_gradient_alone) {
    Tensor<double> u = leaf({0.9, -0.9, 0.1}), other = leaf({0.9});
    SGD<double> sgd({{"rnn.weight_hh_l0", u}, {"head.weight", other}}, {.lr = 1.0});
    sgd.constrain("*weight_hh*", constraints::clamp<double>(-1.0, 1.0));
    const Array grad{-0.5, 0.5, -0.5};
    u.set_grad(Tensor<double>(grad));
    other.set_grad(Tensor<double>(Array{-0.5}));
    sgd.step();
    BOOST_CHECK(u.value() == (Array{1.0, -1.0, 0.6}));
    BOOST_TEST(other.value()(0) == 1.4);          // not matched: unconstrained
    BOOST_CHECK(u.grad().value() == grad);          // the gradient is what backward gave
}

BOOST_AUTO_TEST_CASE(max_norm_rescales_rows_as_torch_renorm) {
    Tensor<double> w = leaf(Array{{3.0, 4.0}, {0.3, 0.4}, {-6.0, 8.0}});
    SGD<double> sgd({{"w", w}}, {.lr = 0.0});
    sgd.constrain("w", constraints::max_norm<double>(2.0));
    w.set_grad(Tensor<double>(xt::zeros<double>({3, 2})));
    sgd.step();
    // torch.renorm(w, 2, 0, 2.0), torch 1.13: rows above norm 2 scaled by 2 / (norm + 1e-7).
    const Array expected{{1.1999999760000004, 1.5999999680000005}, {0.3, 0.4}, {-1.1999999880000003, 1.5999999840000003}};
    BOOST_TEST(max_abs_difference(w.value(), expected) <= 1e-15);
}

BOOST_AUTO_TEST_CASE(a_users_projection_and_non_negative_apply_in_order_to_matching_names) {
    Tensor<double> a = leaf({-1.0, 2.0}), b = leaf({-1.0});
    SGD<double> sgd({{"a", a}, {"b", b}}, {.lr = 0.0});
    sgd.constrain("a", constraints::non_negative<double>());
    sgd.constrain("*", [](xt::xarray<double>& value) { value += 10.0; });
    sgd.apply_constraints();  // also before any step
    BOOST_CHECK(a.value() == (Array{10.0, 12.0}));
    BOOST_TEST(b.value()(0) == 9.0);
}

BOOST_AUTO_TEST_CASE(constrain_refuses_a_pattern_that_matches_no_parameter) {
    Tensor<double> a = leaf({1.0});
    SGD<double> sgd({{"rnn.weight_ih_l0", a}}, {});
    BOOST_CHECK_EXCEPTION(sgd.constrain("weight_hh*", constraints::clamp<double>(-1, 1)), std::invalid_argument,
                          [](const std::invalid_argument& error) {
                              return std::string(error.what()) ==
                                     "sgd: constrain('weight_hh*'): no parameter matches (the parameters: rnn.weight_ih_l0)";
                          });
    BOOST_CHECK_THROW(constraints::clamp<double>(1, -1), std::invalid_argument);
    BOOST_CHECK_THROW(constraints::max_norm<double>(-1), std::invalid_argument);
}

// A projection that produces NaN is caught like a non-finite update: nothing is written.
BOOST_AUTO_TEST_CASE(a_projection_into_nan_leaves_every_weight_unchanged) {
    Tensor<double> a = leaf({1.0}), b = leaf({2.0});
    SGD<double> sgd({{"a", a}, {"b", b}}, {.lr = 0.1});
    sgd.constrain("b", [](xt::xarray<double>& value) { value.fill(std::nan("")); });
    a.set_grad(Tensor<double>(Array{1.0}));
    b.set_grad(Tensor<double>(Array{1.0}));
    BOOST_CHECK_THROW(sgd.step(), NonFiniteError);
    BOOST_TEST(a.value()(0) == 1.0);
    BOOST_TEST(b.value()(0) == 2.0);
}

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
