// The tape engine's behaviours: seeding, accumulation, graph lifetime, higher-order
// gradients, hooks, custom ops through record_op, anomaly mode, gradcheck reports, memory.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <rewind/autograd.hpp>

using namespace rw;
using Array = xt::xarray<double>;
namespace tt = boost::test_tools;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Runs `function`, expects it to throw `Error`, returns the message.
template <class Error, class Function>
std::string error_message(Function&& function) {
    try {
        function();
    } catch (const Error& error) {
        return error.what();
    }
    BOOST_ERROR("the expected exception was not thrown");
    return {};
}

void check_close(const Array& actual, const Array& expected, double tolerance = 1e-12) {
    BOOST_REQUIRE(actual.shape() == expected.shape());
    for (std::size_t i = 0; i < actual.size(); ++i)
        BOOST_TEST(actual.data()[i] == expected.data()[i], tt::tolerance(tolerance));
}

Array column(std::initializer_list<double> values) {
    Array result = Array(values);
    result.reshape({values.size(), 1});
    return result;
}

// What the custom op's backward saw, for the tests to inspect.
struct Probe {
    int calls = 0;
    bool had_grad_output[2] = {false, false};
};

// A user-defined op with two inputs and two outputs, element-wise on equal shapes:
//   u = a * b,   v = exp(a) - b
// The backward rule gets both output gradients at once; either may be absent.
template <class T>
std::vector<Tensor<T>> product_and_exp(const Tensor<T>& a, const Tensor<T>& b, std::shared_ptr<Probe> probe = nullptr) {
    std::vector<xt::xarray<T>> values;
    values.emplace_back(a.value() * b.value());
    values.emplace_back(xt::exp(a.value()) - b.value());
    return record_op<T>("product_and_exp", {a, b}, std::move(values), [probe](const BackwardContext<T>& ctx) -> Gradients<T> {
        if (probe) {
            ++probe->calls;
            probe->had_grad_output[0] = ctx.has_grad_output(0);
            probe->had_grad_output[1] = ctx.has_grad_output(1);
        }
        const auto &a = ctx.input(0), &b = ctx.input(1);
        Tensor<T> grad_a, grad_b;
        if (ctx.has_grad_output(0)) {
            grad_a = mul(ctx.grad_output(0), b);
            grad_b = mul(ctx.grad_output(0), a);
        }
        if (ctx.has_grad_output(1)) {
            const auto& gv = ctx.grad_output(1);
            Tensor<T> from_v = mul(gv, exp(a));
            grad_a = grad_a.defined() ? add(grad_a, from_v) : from_v;
            grad_b = grad_b.defined() ? sub(grad_b, gv) : neg(gv);
        }
        return {grad_a, grad_b};
    });
}

// y = a * b whose backward is deliberately wrong for b at element [1, 2].
Tensor<double> product_with_wrong_backward(const Tensor<double>& a, const Tensor<double>& b) {
    return record_op<double>("bad_product", {a, b}, Array(a.value() * b.value()),
                             [](const BackwardContext<double>& ctx) -> Gradients<double> {
                                 const auto& g = ctx.grad_output(0);
                                 Array grad_b = g.value() * ctx.input(0).value();
                                 grad_b(1, 2) += 0.5;
                                 return {mul(g, ctx.input(1)), Tensor<double>(grad_b)};
                             });
}

// Resident set size in bytes, from /proc/self/statm.
long resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    long size = 0, resident = 0;
    statm >> size >> resident;
    return resident * sysconf(_SC_PAGESIZE);
}

// AddressSanitizer keeps freed memory in a quarantine (256 MB by default) to catch use after free,
// so resident memory grows under it whatever the engine does: the flatness check needs the
// quarantine off (scripts/check-sanitizers runs it so) and is skipped otherwise.
boost::test_tools::assertion_result memory_is_returned(boost::unit_test::test_unit_id) {
#if defined(__SANITIZE_ADDRESS__)
    const char* options = std::getenv("ASAN_OPTIONS");
    if (!options || std::string_view(options).find("quarantine_size_mb=0") == std::string_view::npos) {
        boost::test_tools::assertion_result skip(false);
        skip.message() << "skipped under AddressSanitizer without ASAN_OPTIONS=quarantine_size_mb=0 (its quarantine "
                          "holds freed memory)";
        return skip;
    }
#endif
    return true;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(engine)

// ---- seeding ----

BOOST_AUTO_TEST_CASE(backward_from_a_scalar_uses_an_implicit_seed_of_one) {
    Tensor<double> x(Array{1.0, 2.0, 3.0}, true);
    Tensor<double> y = sum(mul(x, x));
    y.backward();
    check_close(x.grad().value(), Array{2.0, 4.0, 6.0});
}

BOOST_AUTO_TEST_CASE(backward_from_a_non_scalar_with_a_seed_gives_the_vector_jacobian_product) {
    Tensor<double> x(Array{{1.0, 2.0}, {3.0, 4.0}}, true);
    Tensor<double> y = mul_scalar(mul(x, x), 3.0);  // dy/dx = 6x element-wise
    Tensor<double> seed(Array{{1.0, -1.0}, {0.5, 2.0}});
    y.backward(seed);
    check_close(x.grad().value(), Array{{6.0, -12.0}, {9.0, 48.0}});
}

BOOST_AUTO_TEST_CASE(implicit_seed_on_a_non_scalar_root_is_an_error) {
    Tensor<double> x(Array{{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}}, true);
    Tensor<double> y = tanh(x);
    const std::string message = error_message<GraphError>([&] { y.backward(); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "seed"));
    BOOST_TEST(contains(message, "[2, 3]"));
    BOOST_TEST(!x.grad().defined());
}

// ---- accumulation and graph lifetime ----

BOOST_AUTO_TEST_CASE(gradients_accumulate_over_two_backward_calls_and_zero_grad_clears) {
    Tensor<double> x(Array{1.0, -2.0}, true);
    sum(mul_scalar(x, 3.0)).backward();
    sum(mul(x, x)).backward();
    check_close(x.grad().value(), Array{3.0 + 2.0, 3.0 - 4.0});
    x.zero_grad();
    BOOST_TEST(!x.grad().defined());
    sum(mul_scalar(x, 3.0)).backward();
    check_close(x.grad().value(), Array{3.0, 3.0});
}

BOOST_AUTO_TEST_CASE(detach_cuts_the_graph) {
    Tensor<double> x(Array{0.5, -1.5}, true);
    Tensor<double> w(Array{2.0, 3.0}, true);
    Tensor<double> cut = tanh(x).detach();
    BOOST_TEST(!cut.requires_grad());
    BOOST_TEST(cut.is_leaf());
    check_close(cut.value(), Array(xt::tanh(x.value())));
    sum(mul(cut, w)).backward();
    BOOST_TEST(!x.grad().defined());
    check_close(w.grad().value(), cut.value());

    // d/dx [detach(x) * x] = detach(x): the detached factor is a constant.
    Tensor<double> y = sum(mul(x.detach(), x));
    y.backward();
    check_close(x.grad().value(), x.value());
}

BOOST_AUTO_TEST_CASE(no_grad_guard_records_nothing) {
    Tensor<double> x(Array{0.5, -1.5}, true);
    {
        NoGradGuard guard;
        BOOST_TEST(!grad_mode_enabled());
        Tensor<double> y = sum(tanh(mul(x, x)));
        BOOST_TEST(!y.requires_grad());
        BOOST_TEST(!y.grad_fn());
        BOOST_TEST(y.is_leaf());
        BOOST_CHECK_THROW(y.backward(), GraphError);
    }
    BOOST_TEST(grad_mode_enabled());
    Tensor<double> z = sum(x);
    BOOST_TEST(z.requires_grad());
    BOOST_TEST(z.grad_fn() != nullptr);
}

BOOST_AUTO_TEST_CASE(second_backward_through_a_freed_graph_throws_unless_retained) {
    Tensor<double> x(Array{0.5, -1.5}, true);
    Tensor<double> y = sum(tanh(x));
    y.backward();
    const std::string message = error_message<GraphError>([&] { y.backward(); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "retain_graph"));

    x.zero_grad();
    Tensor<double> z = sum(tanh(x));
    z.backward(/*retain_graph=*/true);
    z.backward();
    const Array once = 1.0 - xt::square(xt::tanh(x.value()));
    check_close(x.grad().value(), Array(2.0 * once));
}

// ---- higher order ----

BOOST_AUTO_TEST_CASE(create_graph_gives_a_hessian_vector_product_of_sum_tanh_w_x) {
    const Array w_value{{0.3, -0.7, 0.2}, {0.5, 0.1, -0.4}, {-0.6, 0.8, 0.9}};
    const Array x_value = column({0.2, -0.5, 0.7});
    const Array v_value = column({1.0, 2.0, -1.0});
    Tensor<double> w(w_value);
    Tensor<double> x(x_value, true);
    Tensor<double> f = sum(tanh(matmul(w, x)));
    Tensor<double> g = grad<double>({f}, {x}, {}, {.create_graph = true})[0];
    BOOST_TEST(g.requires_grad());
    Tensor<double> hv = grad<double>({sum(mul(g, Tensor<double>(v_value)))}, {x})[0];

    // H = W^T diag(-2 t (1 - t^2)) W with t = tanh(W x).
    Array expected = xt::zeros<double>({3, 1});
    for (std::size_t k = 0; k < 3; ++k) {
        double z = 0;
        for (std::size_t j = 0; j < 3; ++j) z += w_value(k, j) * x_value(j, 0);
        const double t = std::tanh(z), d = -2 * t * (1 - t * t);
        double wv = 0;
        for (std::size_t j = 0; j < 3; ++j) wv += w_value(k, j) * v_value(j, 0);
        for (std::size_t i = 0; i < 3; ++i) expected(i, 0) += w_value(k, i) * d * wv;
    }
    check_close(hv.value(), expected);
}

BOOST_AUTO_TEST_CASE(create_graph_through_backward_gives_the_second_derivative_of_a_cube) {
    Tensor<double> x(Array{0.5, -2.0, 3.0}, true);
    sum(pow(x, 3.0)).backward(/*retain_graph=*/false, /*create_graph=*/true);
    Tensor<double> first = x.grad();
    check_close(first.value(), Array(3.0 * xt::square(x.value())));
    BOOST_TEST(first.requires_grad());
    Tensor<double> second = grad<double>({sum(first)}, {x})[0];
    check_close(second.value(), Array(6.0 * x.value()));
    x.zero_grad();  // x.grad's graph refers back to x: break the cycle
}

BOOST_AUTO_TEST_CASE(grad_returns_gradients_without_touching_dot_grad) {
    Tensor<double> x(Array{1.0, 2.0}, true);
    Tensor<double> w(Array{3.0, -1.0}, true);
    Tensor<double> h = mul(x, w);
    h.retain_grad();
    auto gradients = grad<double>({sum(mul(h, x))}, {x});  // d/dx sum(w x^2) = 2 w x
    BOOST_REQUIRE(gradients.size() == 1);
    check_close(gradients[0].value(), Array{6.0, -4.0});
    BOOST_TEST(!x.grad().defined());
    BOOST_TEST(!w.grad().defined());
    BOOST_TEST(!h.grad().defined());

    // An input the output does not depend on gets an undefined gradient.
    Tensor<double> unused(Array{1.0}, true);
    auto partial = grad<double>({sum(tanh(x))}, {x, unused});
    BOOST_TEST(partial[0].defined());
    BOOST_TEST(!partial[1].defined());
}

// ---- hooks and retained gradients ----

BOOST_AUTO_TEST_CASE(hooks_see_the_summed_gradient_once_per_backward_on_leaves_and_non_leaves) {
    Tensor<double> x(Array{0.5, -1.0}, true);
    Tensor<double> h = tanh(x);
    std::vector<Array> seen_x, seen_h;
    x.register_hook([&](const Tensor<double>& g) { seen_x.push_back(g.value()); });
    h.register_hook([&](const Tensor<double>& g) { seen_h.push_back(g.value()); });
    // h is used twice (h*h and + h) and x twice (through h and directly).
    Tensor<double> loss = sum(add(add(mul(h, h), h), x));
    loss.backward(/*retain_graph=*/true);

    const Array hv = xt::tanh(x.value());
    const Array expected_h = 2.0 * hv + 1.0;
    const Array expected_x = expected_h * (1.0 - hv * hv) + 1.0;
    BOOST_REQUIRE(seen_h.size() == 1);
    BOOST_REQUIRE(seen_x.size() == 1);
    check_close(seen_h[0], expected_h);
    check_close(seen_x[0], expected_x);
    check_close(x.grad().value(), expected_x);

    loss.backward();
    BOOST_TEST(seen_h.size() == 2);
    BOOST_TEST(seen_x.size() == 2);
    check_close(seen_x[1], expected_x);  // the hook sees this pass's gradient, not the accumulated one
}

BOOST_AUTO_TEST_CASE(a_leaf_hook_fires_as_soon_as_the_leafs_gradient_is_complete) {
    // loss = sum(tanh(x) * y): y's gradient is complete once mul's backward ran, before tanh's
    // backward, so its hook must fire before the hook of h = tanh(x) (data-parallel training
    // starts its all-reduce there, overlapping the rest of the backward).
    Tensor<double> x(Array{0.5, -1.0}, true), y(Array{2.0, 3.0}, true);
    Tensor<double> h = tanh(x);
    std::vector<std::string> order;
    x.register_hook([&](const Tensor<double>&) { order.push_back("x"); });
    y.register_hook([&](const Tensor<double>&) { order.push_back("y"); });
    h.register_hook([&](const Tensor<double>&) { order.push_back("h"); });
    sum(mul(h, y)).backward();
    BOOST_TEST((order == std::vector<std::string>{"y", "h", "x"}));
    check_close(y.grad().value(), xt::tanh(x.value()));
    // A leaf used by two nodes is delivered once, with the sum, after the second.
    std::vector<Array> seen;
    Tensor<double> w(Array{1.5}, true);
    w.register_hook([&](const Tensor<double>& g) { seen.push_back(g.value()); });
    sum(add(mul(w, w), tanh(w))).backward();
    BOOST_REQUIRE(seen.size() == 1);
    const double t = std::tanh(1.5);
    check_close(seen[0], Array{2 * 1.5 + 1 - t * t});
    check_close(w.grad().value(), Array{2 * 1.5 + 1 - t * t});
}

BOOST_AUTO_TEST_CASE(summing_gradients_never_changes_a_gradient_held_elsewhere) {
    // The engine adds a tensor's further gradients in place only into a sum nothing else holds.
    // Here the seed (held by the caller) reaches y and x unchanged through add's backward, a hook
    // keeps y's gradient, and x receives two more gradients after that.
    Tensor<double> x(Array{1.0, 2.0}, true);
    const Tensor<double> c(Array{10.0, 20.0});
    Tensor<double> y = add(x, c);
    std::vector<Tensor<double>> kept;
    y.register_hook([&](const Tensor<double>& g) { kept.push_back(g); });
    Tensor<double> root = add(add(y, x), mul_scalar(x, 3.0));
    const Tensor<double> seed(Array{1.0, -1.0});
    root.backward(seed);
    check_close(seed.value(), Array{1.0, -1.0});
    BOOST_REQUIRE(kept.size() == 1);
    check_close(kept[0].value(), Array{1.0, -1.0});
    check_close(x.grad().value(), Array{5.0, -5.0});
    // A weight used at four steps: its per-step gradients are summed in place, and still right.
    const auto report = gradcheck(
        [](const std::vector<Tensor<double>>& in) {
            Tensor<double> h(Array{{1.0, -1.0}});
            for (int step = 0; step < 4; ++step) h = tanh(gemm(h, in[0], false, true));
            return sum(h);
        },
        {Tensor<double>(Array{{0.5, -0.2}, {0.3, 0.8}}, true)});
    BOOST_TEST(report.passed, report.to_string());
}

BOOST_AUTO_TEST_CASE(retain_grad_keeps_the_gradient_of_a_non_leaf) {
    Tensor<double> x(Array{1.0, -3.0}, true);
    Tensor<double> h = mul_scalar(x, 2.0);
    Tensor<double> other = add_scalar(h, 1.0);
    h.retain_grad();
    sum(mul(other, h)).backward();  // d/dh [(h + 1) h] = 2h + 1
    check_close(h.grad().value(), Array(2.0 * h.value() + 1.0));
    BOOST_TEST(!other.grad().defined());
    check_close(x.grad().value(), Array(2.0 * (2.0 * h.value() + 1.0)));
}

// ---- custom ops ----

BOOST_AUTO_TEST_CASE(custom_op_backward_receives_both_output_gradients_at_once) {
    auto probe = std::make_shared<Probe>();
    Tensor<double> a(Array{0.5, -1.0, 2.0}, true);
    Tensor<double> b(Array{1.5, 0.25, -0.5}, true);
    auto outputs = product_and_exp(a, b, probe);
    BOOST_REQUIRE(outputs.size() == 2);
    BOOST_TEST(outputs[0].output_index() == 0u);
    BOOST_TEST(outputs[1].output_index() == 1u);
    BOOST_TEST(outputs[0].grad_fn() == outputs[1].grad_fn());
    BOOST_TEST(outputs[0].grad_fn()->name() == "product_and_exp");
    sum(add(outputs[0], mul_scalar(outputs[1], 2.0))).backward();
    BOOST_TEST(probe->calls == 1);
    BOOST_TEST(probe->had_grad_output[0]);
    BOOST_TEST(probe->had_grad_output[1]);
    check_close(a.grad().value(), Array(b.value() + 2.0 * xt::exp(a.value())));
    check_close(b.grad().value(), Array(a.value() - 2.0));
}

BOOST_AUTO_TEST_CASE(custom_op_with_one_output_used_sees_the_other_gradient_absent) {
    auto probe = std::make_shared<Probe>();
    Tensor<double> a(Array{0.5, -1.0}, true);
    Tensor<double> b(Array{1.5, 0.25}, true);
    Tensor<double> u = product_and_exp(a, b, probe)[0];  // v is dropped right away
    sum(u).backward();
    BOOST_TEST(probe->calls == 1);
    BOOST_TEST(probe->had_grad_output[0]);
    BOOST_TEST(!probe->had_grad_output[1]);
    check_close(a.grad().value(), b.value());
    check_close(b.grad().value(), a.value());

    // Only the second output used, the first kept alive but unused.
    auto probe2 = std::make_shared<Probe>();
    a.zero_grad();
    b.zero_grad();
    auto both = product_and_exp(a, b, probe2);
    sum(both[1]).backward();
    BOOST_TEST(!probe2->had_grad_output[0]);
    BOOST_TEST(probe2->had_grad_output[1]);
    check_close(a.grad().value(), Array(xt::exp(a.value())));
    check_close(b.grad().value(), Array{-1.0, -1.0});
}

BOOST_AUTO_TEST_CASE(custom_op_passes_gradcheck_with_one_and_both_outputs_used) {
    Tensor<double> a(Array{{0.5, -1.0}, {0.3, 0.8}}, true);
    Tensor<double> b(Array{{1.5, 0.25}, {-0.7, 2.0}}, true);
    auto probe = std::make_shared<Probe>();
    auto only_first = [probe](const std::vector<Tensor<double>>& in) { return product_and_exp(in[0], in[1], probe)[0]; };
    GradcheckReport first = gradcheck(only_first, {a, b}, {}, {"a", "b"});
    BOOST_TEST_MESSAGE(fmt::format("{}", first));
    BOOST_TEST(first.passed);
    BOOST_TEST(!probe->had_grad_output[1]);

    auto only_second = [](const std::vector<Tensor<double>>& in) { return product_and_exp(in[0], in[1])[1]; };
    BOOST_TEST(gradcheck(only_second, {a, b}).passed);

    auto both = [](const std::vector<Tensor<double>>& in) {
        auto out = product_and_exp(in[0], in[1]);
        return mul(tanh(out[0]), out[1]);
    };
    BOOST_TEST(gradcheck(both, {a, b}).passed);
    BOOST_TEST(gradgradcheck(both, {a, b}).passed);
}

BOOST_AUTO_TEST_CASE(hooks_no_grad_and_anomaly_apply_to_a_custom_op) {
    Tensor<double> a(Array{0.5, -1.0}, true);
    Tensor<double> b(Array{1.5, 0.25}, true);

    auto outputs = product_and_exp(a, b);
    std::vector<Array> seen;
    outputs[1].register_hook([&](const Tensor<double>& g) { seen.push_back(g.value()); });
    sum(mul(outputs[1], outputs[1])).backward();
    BOOST_REQUIRE(seen.size() == 1);
    check_close(seen[0], Array(2.0 * outputs[1].value()));

    {
        NoGradGuard guard;
        auto plain = product_and_exp(a, b);
        BOOST_TEST(!plain[0].requires_grad());
        BOOST_TEST(!plain[1].requires_grad());
        BOOST_TEST(!plain[0].grad_fn());
    }

    // exp(1000) overflows: the forward anomaly names the custom op.
    Tensor<double> big(Array{1000.0, 0.0}, true);
    BOOST_CHECK_NO_THROW(product_and_exp(big, b));
    AnomalyGuard anomaly;
    const std::string message = error_message<AnomalyError>([&] { product_and_exp(big, b); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "product_and_exp"));
    BOOST_TEST(contains(message, "forward"));
}

// ---- anomaly mode ----

BOOST_AUTO_TEST_CASE(anomaly_mode_reports_nan_in_the_forward_of_log) {
    Tensor<double> x(Array{1.0, -2.0}, true);
    AnomalyGuard guard;
    BOOST_TEST(anomaly_mode_enabled());
    const std::string message = error_message<AnomalyError>([&] { log(x); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "'log'"));
    BOOST_TEST(contains(message, "forward"));
    BOOST_TEST(contains(message, "NaN"));
}

BOOST_AUTO_TEST_CASE(anomaly_mode_reports_nan_in_a_custom_backward) {
    auto nan_backward = [](const Tensor<double>& x) {
        return record_op<double>("nan_backward", {x}, Array(x.value() * 2.0), [](const BackwardContext<double>& ctx) {
            Array g = ctx.grad_output(0).value() * 2.0;
            g(0) = std::nan("");
            return Gradients<double>{Tensor<double>(g)};
        });
    };
    Tensor<double> x(Array{1.0, 2.0}, true);
    AnomalyGuard guard;
    Tensor<double> y = sum(nan_backward(x));
    const std::string message = error_message<AnomalyError>([&] { y.backward(); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "nan_backward"));
    BOOST_TEST(contains(message, "backward"));
}

BOOST_AUTO_TEST_CASE(without_anomaly_mode_nan_and_inf_pass_silently) {
    BOOST_TEST(!anomaly_mode_enabled());
    Tensor<double> x(Array{1.0, -2.0, 0.0}, true);
    Tensor<double> y;
    BOOST_CHECK_NO_THROW(y = sum(log(x)));
    BOOST_TEST(std::isnan(y.item()));
    BOOST_CHECK_NO_THROW(y.backward());
    BOOST_TEST(std::isinf(x.grad().value()(2)));
}

// ---- precision, misuse ----

BOOST_AUTO_TEST_CASE(float_and_double_tensors_work_in_the_same_program) {
    Tensor<float> xf(xt::xarray<float>{0.5f, -1.0f}, true);
    Tensor<double> xd(Array{0.5, -1.0}, true);
    sum(tanh(mul(xf, xf))).backward();
    sum(tanh(mul(xd, xd))).backward();
    for (std::size_t i = 0; i < 2; ++i) {
        const double x = xd.value()(i), t = std::tanh(x * x);
        const double expected = (1 - t * t) * 2 * x;
        BOOST_TEST(xd.grad().value()(i) == expected, tt::tolerance(1e-14));
        BOOST_TEST(double(xf.grad().value()(i)) == expected, tt::tolerance(1e-6));
    }
    static_assert(std::is_same_v<decltype(xf.grad().item()), float>);
}

BOOST_AUTO_TEST_CASE(a_wrongly_shaped_gradient_is_a_graph_error_naming_the_op) {
    auto misshapen = [](const Tensor<double>& x) {
        return record_op<double>("misshapen", {x}, Array(x.value() + 1.0), [](const BackwardContext<double>&) {
            return Gradients<double>{Tensor<double>::ones({5})};
        });
    };
    Tensor<double> x(Array{{1.0, 2.0}, {3.0, 4.0}}, true);
    Tensor<double> y = sum(misshapen(x));
    const std::string message = error_message<GraphError>([&] { y.backward(); });
    BOOST_TEST_MESSAGE(message);
    BOOST_TEST(contains(message, "'misshapen'"));
    BOOST_TEST(contains(message, "[5]"));
    BOOST_TEST(contains(message, "[2, 2]"));
    BOOST_TEST(!x.grad().defined());
}

// ---- memory ----

BOOST_AUTO_TEST_CASE(tape_memory_is_released_after_backward) {
    std::weak_ptr<Node<double>> first, consumer;  // tanh's node, and the node that held its output
    Tensor<double> x(Array{0.1, 0.2, 0.3, 0.4}, true);
    {
        Tensor<double> h = tanh(x);
        first = h.grad_fn();
        h = mul(h, x);
        consumer = h.grad_fn();
        for (int i = 0; i < 10; ++i) h = add(mul(h, x), h);
        sum(h).backward();
    }
    BOOST_TEST(first.expired());
    BOOST_TEST(consumer.expired());
    BOOST_TEST(x.use_count() == 1);
    BOOST_TEST(x.grad().defined());
}

BOOST_AUTO_TEST_CASE(resident_memory_stays_flat_over_a_thousand_backward_passes,
                     *boost::unit_test::precondition(memory_is_returned)) {
    Tensor<double> x(Array{0.1, -0.2, 0.3, 0.4}, true);
    Tensor<double> w(Array{0.9, 0.8, -0.7, 0.6}, true);
    auto iteration = [&] {
        Tensor<double> h = x;
        for (int i = 0; i < 500; ++i) h = tanh(add(mul(h, w), x));  // 3 ops a step, 1500 + 500 below
        Tensor<double> loss;
        for (int i = 0; i < 250; ++i) loss = loss.defined() ? add(loss, sum(mul(h, h))) : sum(mul(h, h));
        loss.backward();
    };
    long after_warmup = 0;
    for (int i = 0; i < 1000; ++i) {
        iteration();
        if (i == 19) after_warmup = resident_bytes();
    }
    const long growth = resident_bytes() - after_warmup;
    BOOST_TEST_MESSAGE(fmt::format("resident after warm-up {} KiB, growth over 980 iterations {} KiB",
                                   after_warmup / 1024, growth / 1024));
    BOOST_TEST(growth < 4L * 1024 * 1024);
    BOOST_TEST(x.use_count() == 1);
    BOOST_TEST(w.use_count() == 1);
}

// ---- gradcheck reports ----

BOOST_AUTO_TEST_CASE(gradcheck_report_names_the_failing_input_and_its_worst_element) {
    Tensor<double> a(Array{{0.5, -1.0, 0.3}, {0.8, 1.2, -0.4}}, true);
    Tensor<double> b(Array{{1.5, 0.25, -0.5}, {2.0, -0.3, 0.7}}, true);
    auto function = [](const std::vector<Tensor<double>>& in) { return product_with_wrong_backward(in[0], in[1]); };
    GradcheckReport report = gradcheck(function, {a, b}, {}, {"a", "b"});
    const std::string text = fmt::format("{}", report);
    BOOST_TEST_MESSAGE(text);
    BOOST_TEST(!report.passed);
    BOOST_REQUIRE(report.inputs.size() == 2);
    BOOST_TEST(report.inputs[0].passed);
    BOOST_TEST(report.inputs[0].name == "a");
    BOOST_TEST(!report.inputs[1].passed);
    BOOST_TEST(report.inputs[1].name == "b");
    BOOST_TEST(report.inputs[1].failed_elements == 1u);
    BOOST_TEST(report.inputs[1].worst_index == (std::vector<std::size_t>{1, 2}), tt::per_element());
    BOOST_TEST(report.inputs[1].worst_analytic - report.inputs[1].worst_numeric == 0.5, tt::tolerance(1e-6));
    BOOST_TEST(contains(text, "FAILED"));
    BOOST_TEST(contains(text, "b "));
    BOOST_TEST(contains(text, "[1, 2]"));
    BOOST_TEST(text == report.to_string());
}

BOOST_AUTO_TEST_SUITE_END()
