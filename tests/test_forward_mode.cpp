// Forward mode (forward.hpp): tangents through ops, jvp, vjp, hvp by forward-over-reverse, the
// errors that name a bad tangent, and backward passes nested inside a backward rule.

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include <rewind/autograd.hpp>

#include "test_helpers.hpp"

using namespace rw;
using Array = xt::xarray<double>;
using D = Tensor<double>;
using testing::expect_error;

namespace {

void check_close(const Array& actual, const Array& expected, double tolerance = 1e-12) {
    BOOST_REQUIRE(actual.shape() == expected.shape());
    for (std::size_t i = 0; i < actual.size(); ++i)
        BOOST_TEST(std::abs(actual.flat(i) - expected.flat(i)) <= tolerance * (1 + std::abs(expected.flat(i))),
                   "element " << i << ": " << actual.flat(i) << " vs " << expected.flat(i));
}

// f(a, b) = sum(tanh(a b + a)) with a [2, 3] and b broadcast as a row [3].
std::vector<D> model(const std::vector<D>& in) { return {sum(tanh(add(mul(in[0], in[1]), in[0])))}; }

}  // namespace

BOOST_AUTO_TEST_SUITE(forward_mode)

BOOST_AUTO_TEST_CASE(jvp_equals_the_gradient_dotted_with_the_direction) {
    const D a(Array{{0.3, -0.2, 0.5}, {0.1, 0.7, -0.4}}), b(Array{0.9, -1.1, 0.2});
    const D va(Array{{1.0, 0.5, -0.3}, {0.2, -0.6, 0.8}}), vb(Array{-0.7, 0.4, 1.3});
    const auto forward = jvp<double>(model, {a, b}, {va, vb});
    const auto reverse = vjp<double>(model, {a, b}, {D(Array(1.0))});
    const double dot = xt::sum(reverse.gradients[0].value() * va.value())() + xt::sum(reverse.gradients[1].value() * vb.value())();
    check_close(forward.tangents[0].value(), Array(dot));
    check_close(forward.outputs[0].value(), model({a, b})[0].value());
    BOOST_TEST(!forward.outputs[0].has_tangent());  // taken off, so it does not flow into later ops
}

BOOST_AUTO_TEST_CASE(an_undefined_tangent_is_a_zero_direction) {
    const D a(Array{{0.3, -0.2, 0.5}, {0.1, 0.7, -0.4}}), b(Array{0.9, -1.1, 0.2});
    const D va(Array{{1.0, 0.5, -0.3}, {0.2, -0.6, 0.8}});
    const auto both = jvp<double>(model, {a, b}, {va, D::zeros({3})});
    const auto one = jvp<double>(model, {a, b}, {va, D()});
    check_close(one.tangents[0].value(), both.tangents[0].value());
}

BOOST_AUTO_TEST_CASE(ops_under_no_grad_still_carry_tangents) {
    NoGradGuard no_grad;
    const D x = make_dual(D(Array{0.5, -1.0}), D(Array{2.0, 3.0}));
    const D y = tanh(x);
    BOOST_TEST(!y.requires_grad());
    const Array t = Array{0.5, -1.0};
    check_close(y.tangent().value(), (1.0 - xt::tanh(t) * xt::tanh(t)) * Array{2.0, 3.0});
}

BOOST_AUTO_TEST_CASE(hvp_by_forward_over_reverse_matches_the_analytic_hessian) {
    // f = sum(a a b): H [va; vb] = [2 b va + 2 a vb; 2 a va]
    const Array a{0.3, -0.2, 0.5}, b{0.9, -1.1, 0.2}, va{1.0, 0.5, -0.3}, vb{-0.7, 0.4, 1.3};
    const auto result = hvp<double>([](const std::vector<D>& in) { return sum(mul(mul(in[0], in[0]), in[1])); },
                                    {D(a), D(b)}, {D(va), D(vb)});
    check_close(result.value.value(), Array(xt::sum(a * a * b)()));
    check_close(result.gradient[0].value(), 2.0 * a * b);
    check_close(result.gradient[1].value(), a * a);
    check_close(result.product[0].value(), 2.0 * b * va + 2.0 * a * vb);
    check_close(result.product[1].value(), 2.0 * a * va);
    BOOST_TEST(!result.gradient[0].has_tangent());
}

BOOST_AUTO_TEST_CASE(hvp_leaves_sets_the_tangents_for_the_call_only) {
    D w(Array{0.4, -0.3}, true);
    const auto result = hvp_leaves<double>([&] { return sum(mul(mul(w, w), w)); }, {w}, {D(Array{1.0, 2.0})});
    check_close(result.product[0].value(), 6.0 * Array{0.4, -0.3} * Array{1.0, 2.0});  // d2(w^3) = 6 w
    BOOST_TEST(!w.has_tangent());
    BOOST_TEST(!w.grad().defined());  // grad(), not backward(): nothing accumulated
}

BOOST_AUTO_TEST_CASE(a_tangent_of_the_wrong_shape_is_named) {
    const D a(Array{{0.3, -0.2, 0.5}, {0.1, 0.7, -0.4}}), b(Array{0.9, -1.1, 0.2});
    expect_error<ShapeError>([&] { jvp<double>(model, {a, b}, {D::zeros({2, 3}), D::zeros({2})}); },
                             {"jvp: tangent 1 has shape [2], expected [3] (primal 1's shape)"});
    expect_error<std::invalid_argument>([&] { jvp<double>(model, {a, b}, {D()}); }, {"jvp: 1 tangents given for 2 primals"});
    expect_error<ShapeError>(
        [&] { hvp<double>([](const std::vector<D>& in) { return sum(in[0]); }, {a}, {D::zeros({3, 2})}); },
        {"hvp: vector 0 has shape [3, 2], expected [2, 3]"});
    D leaf = D::zeros({2});
    expect_error<ShapeError>([&] { leaf.set_tangent(D::zeros({3})); }, {"set_tangent"});
}

BOOST_AUTO_TEST_CASE(an_op_without_a_forward_rule_is_named_when_a_tangent_reaches_it) {
    auto twice = [](const D& x) {
        return record_op<double>("my_twice", {x}, Array(2.0 * x.value()),
                                 [](const BackwardContext<double>& ctx) -> Gradients<double> {
                                     return {mul_scalar(ctx.grad_output(0), 2.0)};
                                 });
    };
    const D x = make_dual(D(Array{1.0}), D(Array{1.0}));
    expect_error<GraphError>([&] { twice(x); }, {"op 'my_twice' has no forward-mode (JVP) rule"});
    BOOST_TEST(twice(D(Array{1.0})).item() == 2.0);  // without tangents it is an ordinary op
}

// Note [Nested passes]: a rule that runs its own backward over a graph sharing a leaf with the
// outer one must neither read nor clear the outer pass's partial sum on that leaf.
BOOST_AUTO_TEST_CASE(a_backward_inside_a_backward_rule_leaves_the_outer_sums_alone) {
    D w(Array{0.5, -2.0}, true);
    auto inner = [&](const D& x) {
        // y = x * w, whose rule recomputes x * w on a private graph and differentiates it.
        return record_op<double>("replayed_mul", {x, w}, Array(x.value() * w.value()),
                                 [w](const BackwardContext<double>& ctx) -> Gradients<double> {
                                     D fresh = ctx.input(0).detach().set_requires_grad(true);
                                     EnableGradGuard recording(true);
                                     const D again = mul(fresh, w);
                                     auto found = grad<double>({again}, {fresh, w}, {ctx.grad_output(0)});
                                     // The inner pass's own part, not mixed with the outer sum.
                                     BOOST_REQUIRE(found[1].defined());
                                     check_close(found[1].value(), ctx.input(0).value() * ctx.grad_output(0).value());
                                     return {found[0], found[1]};
                                 });
    };
    // w is used after the custom op too, so the outer pass holds a partial sum on w when the
    // custom op's rule runs.
    const D x(Array{3.0, 4.0}, true);
    const D loss = sum(mul(inner(x), w));  // sum(x w^2): dL/dw = 2 x w
    loss.backward();
    check_close(w.grad().value(), Array{2 * 3.0 * 0.5, 2 * 4.0 * -2.0});
    check_close(x.grad().value(), Array{0.25, 4.0});
}

BOOST_AUTO_TEST_SUITE_END()
