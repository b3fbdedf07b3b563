// The fused driver's tangent sweeps (nn/src/fused/tangent.cpp) through the built-in cells' tangent
// rules, in float64: the JVP against the fused first-order backward by the adjoint identity
// <J v, u> = <v, J^T u> (no finite differences), the backward sweep's gradients against the fused
// backward, and its tangents against the generic path's double backward; a planted wrong
// tangent rule is caught; configurations the sweeps do not cover say why.

#include <boost/test/unit_test.hpp>

#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused/check_tangent.hpp"
#include "fused/tangent_run.hpp"
#include "test_helpers.hpp"

namespace {

using namespace rw;
using namespace rw::nn;
using rw::testing::random_tensor;
using Run = fused::detail::TangentRun<double>;

struct Case {
    std::string cell;
    bool bias = true, reverse = false, lengths = false;
    std::string name() const {
        return fmt::format("{} bias={} reverse={} lengths={}", cell, bias, reverse, lengths);
    }
};

std::vector<Case> cases() {
    std::vector<Case> out;
    for (const std::string cell : {"lstm", "gru", "rnn_tanh", "rnn_relu"})
        for (bool bias : {true, false})
            for (bool reverse : {false, true}) out.push_back({cell, bias, reverse, reverse == bias});
    return out;
}

constexpr std::size_t steps = 4, batch = 3, input_size = 3, hidden = 4;

// One cell with its data: the op's inputs (x, weights, initial states), a direction v for them,
// output cotangents u and their tangents.
struct Setup {
    std::shared_ptr<RecurrentCell<double>> cell;
    const fused::CellRules<double>* rules = nullptr;
    Tensor<double> x;
    std::vector<Tensor<double>> initial, inputs, direction, cotangents, cotangent_tangents;
    std::vector<std::int64_t> lengths;

    explicit Setup(const Case& c, std::uint64_t seed = 7) {
        Generator g(seed);
        cell = cell_factory<double>(c.cell, {}, CellOptions{.bias = c.bias})(CellSite{input_size, hidden}, g);
        rules = cell->fused_rules();
        x = random_tensor<double>({steps, batch, input_size}, g, 1.0, true);
        for (std::size_t s = 0; s < cell->state_names().size(); ++s)
            initial.push_back(random_tensor<double>({batch, cell->state_size(s)}, g, 0.5, true));
        inputs = fused::detail::tangent_op_inputs(*rules, x, initial);
        for (const auto& t : inputs) direction.push_back(random_tensor<double>(t.shape(), g));
        cotangents.push_back(random_tensor<double>({steps, batch, hidden}, g));
        for (const auto& s : initial) cotangents.push_back(random_tensor<double>(s.shape(), g));
        for (const auto& u : cotangents) cotangent_tangents.push_back(random_tensor<double>(u.shape(), g));
        if (c.lengths) lengths = {std::int64_t(steps), 2, 1};
    }

    Run sweeps(bool reverse, bool with_backward = true) const {
        return sweeps_of(*rules, reverse, with_backward);
    }
    Run sweeps_of(const fused::CellRules<double>& r, bool reverse, bool with_backward = true) const {
        return fused::detail::run_tangent_sweeps<double>(r, x, initial, lengths, reverse, direction, cotangents,
                                                         cotangent_tangents, with_backward);
    }

    // The fused op on the tape (first order): its outputs.
    std::vector<Tensor<double>> fused_outputs(bool reverse) const {
        auto owned = std::shared_ptr<const fused::CellRules<double>>(cell, rules);
        auto result = fused::run_sequence<double>(owned, x, initial, lengths, reverse, cell->kind());
        std::vector<Tensor<double>> out{result.output};
        for (const auto& s : result.final_state) out.push_back(s);
        return out;
    }

    // The cell's step() on the tape, finished rows keeping their state and giving zeros.
    std::vector<Tensor<double>> generic_outputs(bool reverse) const {
        return fused::detail::tape_sequence(*cell, x, initial, lengths, reverse);
    }
};

double dot(const std::vector<Tensor<double>>& a, const std::vector<Tensor<double>>& b) {
    double sum = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].defined() && b[i].defined()) sum += xt::sum(a[i].value() * b[i].value())();
    return sum;
}

// Largest |a - b| over all tensors, relative to the largest |b|.
double relative_difference(const std::vector<Tensor<double>>& a, const std::vector<Tensor<double>>& b) {
    BOOST_REQUIRE_EQUAL(a.size(), b.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        BOOST_REQUIRE(a[i].defined() && b[i].defined());
        diff = std::max(diff, rw::testing::max_abs_difference(a[i].value(), b[i].value()));
        scale = std::max(scale, double(xt::amax(xt::abs(b[i].value()))()));
    }
    return diff / std::max(scale, 1e-300);
}

// The generic path's tangent of the gradient: H v of φ = <u, F> plus the gradient of <u̇, F>.
std::vector<Tensor<double>> generic_gradient_tangent(const Setup& s, bool reverse) {
    const auto outputs = s.generic_outputs(reverse);
    auto gradient = rw::grad(outputs, s.inputs, s.cotangents, {.retain_graph = true, .create_graph = true});
    Tensor<double> along;
    for (std::size_t i = 0; i < gradient.size(); ++i) {
        if (!s.direction[i].defined()) continue;
        const Tensor<double> term = sum(mul(gradient[i], s.direction[i]));
        along = along.defined() ? add(along, term) : term;
    }
    auto hv = rw::grad<double>({along}, s.inputs, {}, {.retain_graph = true});
    auto first = rw::grad(outputs, s.inputs, s.cotangent_tangents);
    for (std::size_t i = 0; i < hv.size(); ++i) hv[i] = Tensor<double>(hv[i].value() + first[i].value());
    return hv;
}

// The LSTM's rules with one planted mistake in a tangent rule: ḟ's second-derivative term doubled.
class PlantedMistake : public fused::CellRules<double> {
public:
    PlantedMistake(const fused::CellRules<double>& inner, bool in_backward) : inner_(inner), in_backward_(in_backward) {}
    const std::type_info& rules_cell_type() const override { return inner_.rules_cell_type(); }
    fused::CellLayout layout() const override { return inner_.layout(); }
    fused::CellWeights<double> weights() const override { return inner_.weights(); }
    void forward(const fused::ForwardRow<double>& row) const override { inner_.forward(row); }
    void backward(const fused::BackwardRow<double>& row) const override { inner_.backward(row); }
    bool has_tangent_rules() const override { return true; }
    void forward_tangent(const fused::ForwardTangentRow<double>& row) const override {
        inner_.forward_tangent(row);
        if (!in_backward_) row.tangent_next_state[1][0] *= 1.001;  // ċ' of one unit slightly off
    }
    void backward_tangent(const fused::BackwardTangentRow<double>& row) const override {
        inner_.backward_tangent(row);
        if (in_backward_) row.tangent_grad_gate(1)[0] *= 1.001;  // ḋpre_f of one unit slightly off
    }

private:
    const fused::CellRules<double>& inner_;
    bool in_backward_;
};

// A user's tanh RNN cell with fused rules and tangent rules, the backward tangent rule missing
// its second-derivative term (-2 dh y ẏ) when `planted`: what check_fused_cell must catch.
class UserTanhCell : public FusedCell<UserTanhCell, double, StandardCell<double>> {
public:
    UserTanhCell(std::size_t input, std::size_t hidden, Generator& g, bool planted)
        : FusedCell(input, hidden, 1, g, {}, {}, hidden), planted_(planted) {}
    Tensor<double> prepare_input(const Tensor<double>& input) const override {
        return project_input(input, summed_bias());
    }
    State<double> step(const Tensor<double>& x_t, const State<double>& state) const override {
        return {tanh(add(x_t, gemm(state[0], weight_hh_, false, true)))};
    }
    std::string kind() const override { return "user_tanh"; }
    fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 1}; }
    fused::CellWeights<double> weights() const override { return standard_weights(); }
    void forward(const fused::ForwardRow<double>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j) row.next_state[0][j] = row.gates[j] = std::tanh(row.gates[j]);
    }
    void backward(const fused::BackwardRow<double>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j) {
            const double y = row.gates[j];
            row.grad_gates[j] = row.grad_state[0][j] * (1 - y * y);
            row.grad_state[0][j] = 0;
        }
    }
    bool has_tangent_rules() const override { return true; }
    void forward_tangent(const fused::ForwardTangentRow<double>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j) {
            const double y = row.gates[j];
            row.tangent_next_state[0][j] = row.tangent_gates[j] = (1 - y * y) * row.tangent_gates[j];
        }
    }
    void backward_tangent(const fused::BackwardTangentRow<double>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j) {
            const double y = row.gates[j], dh = row.grad_state[0][j];
            row.tangent_grad_gates[j] =
                row.tangent_grad_state[0][j] * (1 - y * y) - (planted_ ? 0.0 : 2 * dh * y * row.tangent_gates[j]);
            row.tangent_grad_state[0][j] = 0;
        }
    }

private:
    bool planted_;
};

CellFactory<double> user_tanh_factory(bool planted) {
    return [planted](const CellSite& site, Generator& g) {
        return std::make_shared<UserTanhCell>(site.input_size, site.hidden_size, g, planted);
    };
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_tangent)

BOOST_AUTO_TEST_CASE(the_jvp_satisfies_the_adjoint_identity_with_the_fused_backward) {
    for (const Case& c : cases()) {
        const Setup s(c);
        const Run run = s.sweeps(c.reverse, false);
        BOOST_REQUIRE_MESSAGE(run.refusal.empty(), c.name() << ": " << run.refusal);
        const auto outputs = s.fused_outputs(c.reverse);
        BOOST_CHECK_MESSAGE(relative_difference(run.outputs, outputs) < 1e-14, c.name() << ": forward differs");
        const auto vjp = rw::grad(outputs, s.inputs, s.cotangents);
        const double jv_u = dot(run.output_tangents, s.cotangents), v_jtu = dot(s.direction, vjp);
        BOOST_CHECK_MESSAGE(std::abs(jv_u - v_jtu) <= 1e-12 * std::abs(v_jtu),
                            c.name() << ": <Jv,u> " << jv_u << " vs <v,J^T u> " << v_jtu);
    }
}

BOOST_AUTO_TEST_CASE(the_backward_sweep_gives_the_fused_backward_gradients) {
    for (const Case& c : cases()) {
        const Setup s(c);
        const Run run = s.sweeps(c.reverse);
        BOOST_REQUIRE_MESSAGE(run.refusal.empty(), c.name() << ": " << run.refusal);
        const auto fused_gradients = rw::grad(s.fused_outputs(c.reverse), s.inputs, s.cotangents);
        const double difference = relative_difference(run.gradients, fused_gradients);
        BOOST_CHECK_MESSAGE(difference < 1e-12, c.name() << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(the_backward_sweep_tangent_equals_the_generic_double_backward) {
    for (const Case& c : cases()) {
        const Setup s(c);
        const Run run = s.sweeps(c.reverse);
        BOOST_REQUIRE_MESSAGE(run.refusal.empty(), c.name() << ": " << run.refusal);
        const double difference = relative_difference(run.gradient_tangents, generic_gradient_tangent(s, c.reverse));
        BOOST_CHECK_MESSAGE(difference < 1e-12, c.name() << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(the_backward_sweep_tangent_is_right_without_a_tangent_on_x) {
    for (const std::string cell : {"lstm", "gru"}) {
        Setup s({cell});
        s.direction[0] = Tensor<double>();  // ẋ = 0: the weight-space HVP the benchmark times
        const Run run = s.sweeps(false);
        const auto expected = generic_gradient_tangent(s, false);
        const double difference = relative_difference(run.gradient_tangents, expected);
        BOOST_CHECK_MESSAGE(difference < 1e-12, cell << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(a_planted_mistake_in_a_tangent_rule_is_caught) {
    const Case c{"lstm", true, false, false};
    const Setup s(c);
    const auto expected = generic_gradient_tangent(s, false);
    const auto vjp = rw::grad(s.fused_outputs(false), s.inputs, s.cotangents);
    const PlantedMistake forward_wrong(*s.rules, false), backward_wrong(*s.rules, true);
    const Run bad_forward = s.sweeps_of(forward_wrong, false);
    const double jv_u = dot(bad_forward.output_tangents, s.cotangents), v_jtu = dot(s.direction, vjp);
    BOOST_CHECK_GT(std::abs(jv_u - v_jtu), 1e-8 * std::abs(v_jtu));
    BOOST_CHECK_GT(relative_difference(bad_forward.gradient_tangents, expected), 1e-8);
    const Run bad_backward = s.sweeps_of(backward_wrong, false);
    BOOST_CHECK_LT(relative_difference(bad_backward.output_tangents, s.sweeps(false, false).output_tangents), 1e-15);
    BOOST_CHECK_GT(relative_difference(bad_backward.gradient_tangents, expected), 1e-8);
}

BOOST_AUTO_TEST_CASE(a_projected_lstm_is_left_to_the_replay_and_says_why) {
    Generator g(3);
    auto cell = cell_factory<double>("lstm", {}, CellOptions{.proj_size = 2})(CellSite{input_size, hidden}, g);
    const Tensor<double> x = random_tensor<double>({steps, batch, input_size}, g);
    const std::vector<Tensor<double>> initial{random_tensor<double>({batch, 2}, g), random_tensor<double>({batch, hidden}, g)};
    const Run run = fused::detail::run_tangent_sweeps<double>(*cell->fused_rules(), x, initial, {}, false, {}, {}, {});
    BOOST_CHECK_NE(run.refusal.find("projection"), std::string::npos);
    BOOST_CHECK(run.output_tangents.empty());
}

BOOST_AUTO_TEST_CASE(check_fused_cell_checks_the_built_in_cells_tangent_rules) {
    for (const std::string cell : {"lstm", "gru", "rnn_tanh", "rnn_relu"}) {
        const FusedCheckReport report = check_fused_cell(cell_factory<double>(cell), 3, 4);
        BOOST_CHECK_MESSAGE(report.passed, report.to_string());
        BOOST_CHECK(report.tangents_note.empty());
        for (const auto& direction : report.directions) BOOST_CHECK_EQUAL(direction.tangents.empty(), false);
    }
}

BOOST_AUTO_TEST_CASE(check_fused_cell_passes_a_users_right_tangent_rules_and_names_a_wrong_one) {
    const FusedCheckReport right = check_fused_cell(user_tanh_factory(false), 3, 4);
    BOOST_CHECK_MESSAGE(right.passed, right.to_string());
    const FusedCheckReport wrong = check_fused_cell(user_tanh_factory(true), 3, 4);
    BOOST_CHECK(!wrong.passed);
    BOOST_CHECK_EQUAL(wrong.pass, "tangents");
    BOOST_CHECK_NE(wrong.tensor.find("Hv+J"), std::string::npos);
    BOOST_CHECK_NE(wrong.to_string().find("tangent rules' sweeps"), std::string::npos);
}

BOOST_AUTO_TEST_CASE(check_fused_cell_says_when_the_sweeps_leave_a_projected_lstm_to_the_replay) {
    const FusedCheckReport report = check_fused_cell(cell_factory<double>("lstm", {}, {.proj_size = 2}), 3, 4);
    BOOST_CHECK(report.passed);
    BOOST_CHECK_NE(report.tangents_note.find("projection"), std::string::npos);
}

// Through a layer (the fused op's seam, replay.hpp): a two-layer bidirectional layer with lengths,
// fused and generic from the same seed.
struct Layers {
    Recurrent<double> fused, generic;
    Tensor<double> x, weighting;
    std::vector<Tensor<double>> direction;
    std::vector<std::int64_t> lengths{4, 2, 3};

    explicit Layers(const std::string& cell, std::size_t proj_size = 0, bool bidirectional = true)
        : fused(cell_factory<double>(cell, {}, {.proj_size = proj_size}), options(ExecutionPath::fused, proj_size, bidirectional)),
          generic(cell_factory<double>(cell, {}, {.proj_size = proj_size}),
                  options(ExecutionPath::generic, proj_size, bidirectional)) {
        Generator g(11);
        x = random_tensor<double>({steps, batch, input_size}, g, 1.0, true);
        weighting = random_tensor<double>({steps, batch, (bidirectional ? 2 : 1) * (proj_size ? proj_size : hidden)}, g);
        for (const auto& p : fused.parameters()) direction.push_back(random_tensor<double>(p.shape(), g));
    }
    static RecurrentOptions options(ExecutionPath path, std::size_t proj_size, bool bidirectional) {
        return {.input_size = input_size, .hidden_size = hidden, .num_layers = 2, .bidirectional = bidirectional, .path = path,
                .seed = 5, .proj_size = proj_size};
    }
    Tensor<double> loss(Recurrent<double>& layer) const {
        return sum(mul(weighting, tanh(layer.forward(x, {}, lengths).output)));
    }
    // The double backward: d/dθ <dL/dθ, v>.
    std::vector<Tensor<double>> double_backward(Recurrent<double>& layer) const {
        const auto params = layer.parameters();
        const auto gradient = rw::grad<double>({loss(layer)}, params, {}, {.create_graph = true});
        Tensor<double> along;
        for (std::size_t i = 0; i < params.size(); ++i) {
            const Tensor<double> term = sum(mul(gradient[i], direction[i]));
            along = along.defined() ? add(along, term) : term;
        }
        return rw::grad<double>({along}, params);
    }
    std::vector<Tensor<double>> hvp(Recurrent<double>& layer) const {
        return rw::hvp_leaves<double>([&] { return loss(layer); }, layer.parameters(), direction).product;
    }
};

BOOST_AUTO_TEST_CASE(a_layers_double_backward_runs_the_sweeps_and_equals_the_generic_path) {
    for (const std::string cell : {"lstm", "gru", "rnn_tanh", "rnn_relu"}) {
        Layers layers(cell);
        const std::size_t before = fused::driver::tangent_sweeps_run();
        const auto fast = layers.double_backward(layers.fused);
        BOOST_CHECK_EQUAL(fused::driver::tangent_sweeps_run() - before, 4u);  // 2 layers x 2 directions
        BOOST_CHECK(layers.fused.uses_fused());
        const double difference = relative_difference(fast, layers.double_backward(layers.generic));
        BOOST_CHECK_MESSAGE(difference < 1e-12, cell << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(rw_hvp_through_the_fused_op_runs_the_sweeps_and_equals_the_generic_double_backward) {
    // On run_sequence with a replay; loss = <w, y ⊙ y>: forward-over-reverse through the op's
    // forward rule and its gradients' tangents, which reuse the forward rule's sweep (Note
    // [Forward sweep kept]): one forward sweep per product.
    for (const Case& c : {Case{"lstm", true, true}, Case{"gru", false, false}, Case{"rnn_tanh", true, false}}) {
        const Setup s(c);
        Generator g(5);
        const Tensor<double> w = random_tensor<double>({steps, batch, hidden}, g);
        const auto cell = s.cell;
        const bool reverse = c.reverse;
        fused::SequenceReplay<double> replay = [cell, reverse](const std::vector<Tensor<double>>& in) {
            std::vector<Tensor<double>> prepared = unstack(cell->prepare_input(in[0]), 0);
            State<double> state(in.begin() + 1, in.end());
            std::vector<Tensor<double>> outputs(prepared.size());
            for (std::size_t k = 0; k < prepared.size(); ++k) {
                const std::size_t t = reverse ? prepared.size() - 1 - k : k;
                state = cell->step(prepared[t], state);
                outputs[t] = state[0];
            }
            std::vector<Tensor<double>> results{stack(outputs, 0)};
            results.insert(results.end(), state.begin(), state.end());
            return results;
        };
        const std::shared_ptr<const fused::CellRules<double>> rules(cell, s.rules);
        auto loss = [&] {
            auto result = fused::run_sequence<double>(rules, s.x, s.initial, {}, reverse, cell->kind(), 0, replay);
            return sum(mul(w, mul(result.output, result.output)));
        };
        const std::vector<Tensor<double>>& all = s.inputs;  // x, weights, initial states
        const std::size_t before = fused::driver::tangent_sweeps_run();
        const std::size_t forward_before = fused::driver::forward_sweeps_run();
        const auto product = rw::hvp_leaves<double>(loss, all, s.direction).product;
        BOOST_CHECK_EQUAL(fused::driver::tangent_sweeps_run() - before, 2u);  // the forward rule, the backward
        BOOST_CHECK_EQUAL(fused::driver::forward_sweeps_run() - forward_before, 1u);
        // The generic double backward of the same loss.
        const auto outputs = s.generic_outputs(reverse);
        const auto gradient = rw::grad<double>({sum(mul(w, mul(outputs[0], outputs[0])))}, all, {}, {.create_graph = true});
        Tensor<double> along;
        for (std::size_t i = 0; i < all.size(); ++i) {
            const Tensor<double> term = sum(mul(gradient[i], s.direction[i]));
            along = along.defined() ? add(along, term) : term;
        }
        const double difference = relative_difference(product, rw::grad<double>({along}, all));
        BOOST_CHECK_MESSAGE(difference < 1e-12, c.name() << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(the_sweeps_and_the_replay_give_the_same_double_backward) {
    for (const std::string cell : {"lstm", "gru"}) {
        Layers layers(cell);
        const auto fast = layers.double_backward(layers.fused);
        fused::driver::set_tangent_sweeps_enabled(false);
        const std::size_t before = fused::driver::tangent_sweeps_run();
        const auto replayed = layers.double_backward(layers.fused);
        fused::driver::set_tangent_sweeps_enabled(true);
        BOOST_CHECK_EQUAL(fused::driver::tangent_sweeps_run(), before);
        const double difference = relative_difference(fast, replayed);
        BOOST_CHECK_MESSAGE(difference < 1e-12, cell << ": relative difference " << difference);
    }
}

BOOST_AUTO_TEST_CASE(a_direct_run_sequence_without_a_replay_gets_second_order_from_the_sweeps) {
    const Setup s({"gru"});
    const std::shared_ptr<const fused::CellRules<double>> rules(s.cell, s.rules);
    auto outputs = [&] {
        auto result = fused::run_sequence<double>(rules, s.x, s.initial, {}, false, "gru");  // no replay
        return std::vector<Tensor<double>>{result.output, result.final_state[0]};
    };
    const std::size_t before = fused::driver::tangent_sweeps_run();
    auto first = rw::grad(outputs(), s.inputs, s.cotangents, {.create_graph = true});
    Tensor<double> along;
    for (std::size_t i = 0; i < first.size(); ++i) {
        const Tensor<double> term = sum(mul(first[i], s.direction[i]));
        along = along.defined() ? add(along, term) : term;
    }
    const auto fast = rw::grad<double>({along}, s.inputs);
    BOOST_CHECK_EQUAL(fused::driver::tangent_sweeps_run() - before, 1u);
    const auto generic_outputs = s.generic_outputs(false);
    auto generic_first = rw::grad(generic_outputs, s.inputs, s.cotangents, {.create_graph = true});
    Tensor<double> generic_along;
    for (std::size_t i = 0; i < generic_first.size(); ++i) {
        const Tensor<double> term = sum(mul(generic_first[i], s.direction[i]));
        generic_along = generic_along.defined() ? add(generic_along, term) : term;
    }
    BOOST_CHECK_LT(relative_difference(fast, rw::grad<double>({generic_along}, s.inputs)), 1e-12);
}

BOOST_AUTO_TEST_CASE(a_projected_lstms_double_backward_takes_the_replay) {
    Layers layers("lstm", 2);
    const std::size_t before = fused::driver::tangent_sweeps_run();
    const auto replayed = layers.double_backward(layers.fused);
    BOOST_CHECK_EQUAL(fused::driver::tangent_sweeps_run(), before);
    BOOST_CHECK_LT(relative_difference(replayed, layers.double_backward(layers.generic)), 1e-12);
}

BOOST_AUTO_TEST_SUITE_END()
