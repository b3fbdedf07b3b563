// Forward mode for every op: each op's JVP rule against its own VJP by the adjoint identity
// <J v, u> = <v, Jᵀ u> (float64, 1e-12 relative, no finite differences), against central
// differences as a second opinion, and forward-over-reverse HVPs against reverse-over-reverse.
// The cases (jvp_cases.hpp) must cover every op ops.hpp declares and every op autograd/src
// records, and a planted wrong rule must be caught.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include "jvp_cases.hpp"

using namespace rw;
using namespace rw::jvp_checks;

namespace {

constexpr double adjoint_tolerance = 1e-12;
constexpr double difference_tolerance = 1e-6;

std::string read(const std::filesystem::path& path) {
    std::ifstream file(path);
    BOOST_REQUIRE_MESSAGE(file, "cannot read " << path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

// Every input with a tangent, then each input alone (the others' zero tangents skipped).
std::vector<std::vector<std::size_t>> tangent_sets(std::size_t inputs) {
    std::vector<std::vector<std::size_t>> sets(1);
    for (std::size_t i = 0; i < inputs; ++i) sets[0].push_back(i);
    if (inputs > 1)
        for (std::size_t i = 0; i < inputs; ++i) sets.push_back({i});
    return sets;
}

// x² with a chosen forward and backward factor in place of 2 x: a custom op to plant bugs in.
D planted_square(const D& x, double forward_factor, double backward_factor) {
    return record_op<double>(
        "planted_square", {x}, Array(x.value() * x.value()),
        [backward_factor](const BackwardContext<double>& ctx) -> Gradients<double> {
            return {mul(mul_scalar(ctx.grad_output(0), backward_factor), ctx.input(0))};
        },
        [forward_factor](const ForwardContext<double>& ctx) -> std::vector<D> {
            return {mul(mul_scalar(ctx.tangent(0), forward_factor), ctx.input(0))};
        });
}

OpCase planted_case(double forward_factor, double backward_factor) {
    return {"planted_square", "",
            [=](const std::vector<D>& x) -> std::vector<D> { return {planted_square(x[0], forward_factor, backward_factor)}; },
            {uniform({2, 3}, 1)}};
}

// One LSTM step written with ops (gates i, f, g, o in PyTorch's order).
std::pair<D, D> lstm_step(const D& x, const D& h, const D& c, const D& w_ih, const D& w_hh, const D& b) {
    const D gates = add(add(gemm(x, w_ih, false, true), gemm(h, w_hh, false, true)), b);
    const auto parts = chunk(gates, 4, 1);
    const D next_c = add(mul(sigmoid(parts[1]), c), mul(sigmoid(parts[0]), tanh(parts[2])));
    return {mul(sigmoid(parts[3]), tanh(next_c)), next_c};
}

std::vector<D> uniforms(const std::vector<Shape>& shapes, std::uint64_t seed) {
    std::vector<D> tensors;
    for (std::size_t i = 0; i < shapes.size(); ++i) tensors.push_back(uniform(shapes[i], seed + i));
    return tensors;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_jvp)

BOOST_AUTO_TEST_CASE(every_op_satisfies_the_adjoint_identity_between_jvp_and_vjp) {
    for (const OpCase& c : all_cases())
        for (const auto& set : tangent_sets(c.primals.size()))
            BOOST_TEST_CONTEXT(c.op << " (" << c.label << "), tangents on " << set.size() << " input(s) from "
                                    << set.front()) {
                const AdjointGap gap = adjoint_gap(c, set);
                BOOST_TEST(gap.relative <= adjoint_tolerance);
                // With every input moving, not both sides zero term by term (an identity 0 = 0
                // would prove nothing), except where the derivative is zero (x^0, dropout p = 1).
                // One input alone may lose everywhere (maximum) and rightly give 0.
                if (set.size() == c.primals.size() && c.label.find("zero derivative") == std::string::npos)
                    BOOST_TEST(gap.scale > 0.0);
            }
}

BOOST_AUTO_TEST_CASE(every_op_jvp_matches_central_differences) {
    for (const OpCase& c : all_cases())
        if (c.smooth)
            BOOST_TEST_CONTEXT(c.op << " (" << c.label << ")") {
                BOOST_TEST(central_difference_gap(c) <= difference_tolerance);
            }
}

BOOST_AUTO_TEST_CASE(every_op_of_ops_hpp_and_every_recorded_op_has_a_jvp_case) {
    const std::filesystem::path root = std::filesystem::path(REWIND_TESTS_DIR) / "..";
    std::set<std::string> required;
    const std::string header = read(root / "autograd" / "include" / "rewind" / "autograd" / "ops.hpp");
    const std::regex declaration(R"(template <class T[^\n]*?>\s+[\w:<>, ]*?\b(\w+)\()");
    for (auto it = std::sregex_iterator(header.begin(), header.end(), declaration); it != std::sregex_iterator(); ++it)
        if ((*it)[1] != "argmax") required.insert((*it)[1]);  // argmax returns indices: nothing to differentiate
    BOOST_TEST(required.size() >= 40u);
    // The node names recorded in autograd/src ("checkpoint_" + name is the checkpoint op).
    const std::regex recorded(R"(record_op<T>\(\s*"(\w+?)_?")");
    std::size_t sites = 0;
    for (const auto& entry : std::filesystem::directory_iterator(root / "autograd" / "src")) {
        const std::string file = entry.path().filename().string();
        if (file.rfind("ops_", 0) != 0 && file != "recompute.cpp") continue;  // make_dual (forward.cpp) sets its own tangent
        const std::string source = read(entry.path());
        for (auto it = std::sregex_iterator(source.begin(), source.end(), recorded); it != std::sregex_iterator(); ++it, ++sites)
            required.insert((*it)[1]);
    }
    BOOST_TEST(sites >= 30u);
    std::set<std::string> covered;
    for (const OpCase& c : all_cases()) covered.insert(c.op);
    for (const auto& op : required) BOOST_TEST(covered.count(op) == 1u, "no JVP case for op " << op);
}

BOOST_AUTO_TEST_CASE(a_planted_wrong_forward_rule_breaks_the_adjoint_identity) {
    BOOST_TEST(adjoint_gap(planted_case(2.0, 2.0), {0}).relative <= adjoint_tolerance);  // the right rule passes
    BOOST_TEST(adjoint_gap(planted_case(2.001, 2.0), {0}).relative > 1e-5);
    BOOST_TEST(adjoint_gap(planted_case(0.0, 2.0), {0}).relative > 0.5);  // a rule that forgets the tangent
}

BOOST_AUTO_TEST_CASE(forward_and_backward_wrong_alike_are_caught_by_central_differences) {
    BOOST_TEST(adjoint_gap(planted_case(3.0, 3.0), {0}).relative <= adjoint_tolerance);  // consistent, so the identity holds
    BOOST_TEST(central_difference_gap(planted_case(3.0, 3.0)) > 0.1);
    BOOST_TEST(central_difference_gap(planted_case(2.0, 2.0)) <= difference_tolerance);
}

BOOST_AUTO_TEST_CASE(hvp_through_tanh_and_sigmoid_matches_reverse_over_reverse) {
    const D weights = uniform({2, 3}, 200);
    const auto f = [weights](const std::vector<D>& in) {
        return sum(mul(sigmoid(tanh(add(gemm(in[0], in[1], false, true), in[2]))), weights));
    };
    const auto primals = uniforms({{2, 4}, {3, 4}, {3}}, 210);
    BOOST_TEST(hvp_gap(f, primals, uniforms({{2, 4}, {3, 4}, {3}}, 220)) <= adjoint_tolerance);
}

BOOST_AUTO_TEST_CASE(hvp_through_softmax_and_layer_norm_matches_reverse_over_reverse) {
    const D weights = uniform({2, 3, 4}, 230);
    const auto f = [weights](const std::vector<D>& in) {
        const D normalised = layer_norm(in[0], {4}, in[1], in[2]);
        return add(sum(mul(softmax(normalised, 2), weights)), mean(log_softmax(mul(normalised, in[0]), 1)));
    };
    const std::vector<Shape> shapes{{2, 3, 4}, {4}, {4}};
    BOOST_TEST(hvp_gap(f, uniforms(shapes, 240), uniforms(shapes, 250)) <= adjoint_tolerance);
}

BOOST_AUTO_TEST_CASE(hvp_through_the_losses_matches_reverse_over_reverse) {
    const auto f = [](const std::vector<D>& in) {
        const D logits = add(matmul(in[0], in[1]), in[2]);
        const D soft = softmax(in[3], 1);
        return add(add(cross_entropy(logits, {2, 0, 1}, Array{1.0, 0.5, 2.0}), cross_entropy(logits, soft)),
                   mse_loss(softplus(logits), log_sigmoid(in[3])));
    };
    const std::vector<Shape> shapes{{3, 4}, {4, 3}, {3}, {3, 3}};
    BOOST_TEST(hvp_gap(f, uniforms(shapes, 260), uniforms(shapes, 270)) <= adjoint_tolerance);
}

BOOST_AUTO_TEST_CASE(hvp_through_two_lstm_steps_written_with_ops_matches_reverse_over_reverse) {
    const auto f = [](const std::vector<D>& in) {
        auto [h, c] = lstm_step(in[0], in[1], in[2], in[3], in[4], in[5]);
        std::tie(h, c) = lstm_step(mul_scalar(in[0], -0.5), h, c, in[3], in[4], in[5]);
        return add(cross_entropy(h, {0, 2}), mean(mul(c, c)));
    };
    const std::vector<Shape> shapes{{2, 3}, {2, 3}, {2, 3}, {12, 3}, {12, 3}, {12}};
    BOOST_TEST(hvp_gap(f, uniforms(shapes, 280), uniforms(shapes, 290)) <= adjoint_tolerance);
}

BOOST_AUTO_TEST_CASE(hvp_through_the_other_ops_matches_reverse_over_reverse) {
    const auto f = [](const std::vector<D>& in) {
        const D a = in[0], b = in[1];  // [3, 4], positive
        const D mixed = concat<double>({maximum(a, b), minimum(div(a, b), sqrt(b)), rw::where(xt::xarray<bool>{true, false, true, false}, a, b)}, 0);
        const auto pieces = split(permute(reshape(mixed, {3, 3, 4}), {1, 0, 2}), {1, 2}, 0);
        const D picked = index_select(stack(unstack(pieces[1], 1), 0), 1, {1, 0, 1});
        const D rows = slice(sum_to(broadcast_to(unsqueeze(var(picked, {2}), 0), {2, 3, 3}), {3, 3}), 0, 1, 3);
        return add(sum(mul(pow(rows, 3.0), log(add_scalar(abs(rows), 1.0)))),
                   sum(mul(rsqrt(b), exp(clamp(sub(neg(a), mul_mask(a, Array(xt::ones<double>({3, 4})))), -10.0, 10.0)))));
    };
    const std::vector<D> primals{uniform({3, 4}, 300, 0.5, 2.0), uniform({3, 4}, 301, 0.5, 2.0)};
    BOOST_TEST(hvp_gap(f, primals, uniforms({{3, 4}, {3, 4}}, 310)) <= adjoint_tolerance);
}

// checkpoint's backward cannot run with create_graph, so its HVP (forward-over-reverse through
// the rerun, the parameter's tangent read by the rerun itself) is held to the plain function's.
BOOST_AUTO_TEST_CASE(hvp_and_jvp_through_checkpoint_equal_those_of_the_plain_function) {
    D w(op_checks::random_array({3, 2}, 320, -1, 1), true);
    const CheckpointFn<double> fn = [&w](const std::vector<D>& in) -> std::vector<D> {
        return {tanh(add(gemm(in[0], w, false, true), in[1]))};
    };
    const D x(op_checks::random_array({4, 2}, 321, -1, 1), true), h(op_checks::random_array({4, 3}, 322, -1, 1), true);
    const D weights = uniform({4, 3}, 323);
    const std::vector<D> vectors = uniforms({{4, 2}, {4, 3}, {3, 2}}, 330);
    const auto plain = hvp_leaves<double>([&] { return sum(mul(mul(fn({x, h})[0], fn({x, h})[0]), weights)); }, {x, h, w}, vectors);
    const auto recomputed = hvp_leaves<double>(
        [&] {
            const D y = checkpoint<double>("hvp", fn, {x, h}, {w})[0];
            return sum(mul(mul(y, y), weights));
        },
        {x, h, w}, vectors);
    for (std::size_t i = 0; i < 3; ++i)
        BOOST_TEST(xt::amax(xt::abs(recomputed.product[i].value() - plain.product[i].value()))() <=
                   adjoint_tolerance * (1 + xt::amax(xt::abs(plain.product[i].value()))()));

    w.set_tangent(vectors[2]);  // the parameter's own tangent, read by fn in the rerun
    const auto through = jvp<double>([&](const std::vector<D>& in) { return checkpoint<double>("jvp", fn, in, {w}); }, {x, h},
                                     {vectors[0], vectors[1]});
    const auto direct = jvp<double>(fn, {x, h}, {vectors[0], vectors[1]});
    w.clear_tangent();
    BOOST_TEST(xt::amax(xt::abs(through.tangents[0].value() - direct.tangents[0].value()))() <= 1e-15);
    BOOST_TEST(xt::amax(xt::abs(direct.tangents[0].value()))() > 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
