// check_fused_cell: hand-written fused rules against the tape's derivative of the same cell's
// step(), step by step. Correct rules pass; planted mistakes are caught and named with their
// time step and tensor.

#include <boost/test/unit_test.hpp>

#include <algorithm>

#include <rewind/nn.hpp>
#include <rewind/nn/analysis/path_bench.hpp>

#include "mgu_cell.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

// Planted mistakes: each subclass claims the rules as its own (rules_cell_type) and keeps the
// correct step(), so the tape knows the right answer.
class ForgetSignFlipped : public LSTMCell<double> {
public:
    using LSTMCell<double>::LSTMCell;
    const std::type_info& rules_cell_type() const override { return typeid(ForgetSignFlipped); }
    void backward(const fused::BackwardRow<double>& row) const override {
        LSTMCell<double>::backward(row);
        for (std::size_t j = 0; j < row.hidden; ++j) row.grad_gates[row.hidden + j] *= -1;  // dL/d(forget)
    }
};

class CarryDropped : public GRUCell<double> {
public:
    using GRUCell<double>::GRUCell;
    const std::type_info& rules_cell_type() const override { return typeid(CarryDropped); }
    void backward(const fused::BackwardRow<double>& row) const override {
        GRUCell<double>::backward(row);
        std::fill_n(row.grad_state[0], row.hidden, 0.0);  // the z ⊙ dh' carry to h
    }
};

class CellCarryDropped : public LSTMCell<double> {
public:
    using LSTMCell<double>::LSTMCell;
    const std::type_info& rules_cell_type() const override { return typeid(CellCarryDropped); }
    void forward(const fused::ForwardRow<double>& row) const override {
        LSTMCell<double>::forward(row);
        // c' = f ⊙ c + i ⊙ g without the f ⊙ c term.
        const double* f = row.gates + row.hidden;
        for (std::size_t j = 0; j < row.hidden; ++j) row.next_state[1][j] -= f[j] * row.state[1][j];
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_check)

BOOST_AUTO_TEST_CASE(every_built_in_cell_agrees_with_its_step) {
    for (const auto& info : cell_table()) {
        Generator g(3);
        const auto cell = cell_factory<double>(info.name)(4, 5, g);
        const FusedCheckReport report = check_fused_cell(*cell, {.steps = 6, .batch = 4});
        BOOST_TEST(report.passed, info.name << ":\n" << report.to_string());
        BOOST_TEST(report.directions.size() == 2u);
        BOOST_TEST(report.directions[0].steps.size() == 6u);
        // Every state and gate block is reported at every step.
        BOOST_TEST(report.directions[0].steps[0].backward.size() == info.gates + info.state_names.size());
    }
}

BOOST_AUTO_TEST_CASE(a_projected_lstm_agrees_with_its_step_with_h_at_its_own_width) {
    Generator g(3);
    const LSTMCell<double> cell(4, 5, g, {}, {.proj_size = 2});
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 6, .batch = 4});
    BOOST_TEST(report.passed, report.to_string());
    // weight_hr's gradient (the driver's dW_proj) is compared with the others.
    const auto& gradients = report.directions[0].gradients;
    BOOST_TEST((std::find_if(gradients.begin(), gradients.end(), [](const auto& d) { return d.tensor == "weight_hr"; }) !=
                gradients.end()));
}

BOOST_AUTO_TEST_CASE(a_mistake_under_a_projection_is_still_named) {
    Generator g(1);
    const ForgetSignFlipped cell(3, 4, g, {}, {.proj_size = 2});
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 5, .batch = 3});
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.pass == "backward");
    BOOST_TEST(report.step == 4u);
    BOOST_TEST(report.tensor == "gate forget");
}

BOOST_AUTO_TEST_CASE(a_flipped_sign_in_a_gate_derivative_is_named_at_the_last_step) {
    Generator g(1);
    const ForgetSignFlipped cell(3, 4, g);
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 5, .batch = 3});
    BOOST_TEST_MESSAGE(report.to_string());
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.pass == "backward");
    BOOST_TEST(!report.reverse);
    BOOST_TEST(report.step == 4u);
    BOOST_TEST(report.tensor == "gate forget");
    BOOST_TEST(report.to_string().find("time step 4 in dL/d(gate forget)") != std::string::npos, report.to_string());
}

BOOST_AUTO_TEST_CASE(a_missing_state_carry_term_is_named_with_its_step) {
    Generator g(2);
    const CarryDropped cell(3, 4, g);
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 5, .batch = 3, .both_directions = false});
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.pass == "backward");
    BOOST_TEST(report.step == 4u);
    BOOST_TEST(report.tensor == "h");
    // The gate derivatives of that step were still right: the carry is what is wrong.
    for (const auto& d : report.directions[0].steps[4].backward)
        if (d.tensor.rfind("gate", 0) == 0) BOOST_TEST(d.difference <= 1e-12, d.tensor);
}

BOOST_AUTO_TEST_CASE(a_wrong_forward_rule_is_named_at_the_first_step) {
    Generator g(3);
    const CellCarryDropped cell(3, 4, g);
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 4, .batch = 2, .with_lengths = false});
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.pass == "forward");
    BOOST_TEST(report.step == 0u);
}

BOOST_AUTO_TEST_CASE(in_the_reverse_direction_the_backward_walk_starts_at_step_zero) {
    Generator g(1);
    const ForgetSignFlipped cell(3, 4, g);
    FusedCheckReport report = check_fused_cell(cell, {.steps = 5, .batch = 3});
    // The forward direction is reported first; the reverse one is in the per-direction table.
    BOOST_TEST(report.directions[1].reverse);
    BOOST_TEST(report.directions[1].steps[0].backward[1].difference > 1e-6);
}

BOOST_AUTO_TEST_CASE(a_cell_without_rules_is_refused) {
    Generator g(1);
    class Plain : public RNNCell<double> {
    public:
        using RNNCell<double>::RNNCell;
    };
    const Plain cell(2, 3, Nonlinearity::tanh, g);
    BOOST_CHECK_THROW(check_fused_cell(cell), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(a_users_cell_is_checked_from_its_factory_in_one_call) {
    const FusedCheckReport check = check_fused_cell(examples::mgu_factory<double>(), 3, 4, {.steps = 4, .batch = 2});
    BOOST_TEST(check.passed, check.to_string());
    BOOST_TEST(check.directions.size() == 2u);
    BOOST_CHECK_THROW(check_fused_cell(CellFactory<double>(), 3, 4), std::invalid_argument);
    const CellFactory<double> makes_nothing = [](std::size_t, std::size_t, Generator&) {
        return std::shared_ptr<RecurrentCell<double>>();
    };
    BOOST_CHECK_THROW(check_fused_cell(makes_nothing, 3, 4), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(a_users_cell_is_timed_on_both_paths_from_its_factory_in_one_call) {
    const PathBenchResult bench = bench_cell_paths<float>(examples::mgu_factory<float>(),
                                                          {.steps = 3, .batch = 2, .input = 3, .hidden = 4},
                                                          {.repeats = 2, .warmup = 0});
    BOOST_TEST(bench.fused_ran, bench.path_note);
    BOOST_TEST(bench.fused_ms.size() == 2u);
    BOOST_TEST(bench.generic_ms.size() == 2u);
    // The MGU's layout: 2 gate blocks from x (I = 3), the forget product and the second product (H = 4).
    BOOST_TEST(bench.flops == 3.0 * 3 * 2 * 2 * (2 * 4 * 3 + 4 * 4 + 4 * 4));
    const std::string line = bench.to_string();
    BOOST_TEST(line.find("generic/fused") != std::string::npos, line);
    BOOST_TEST(line.find("fused path ran") != std::string::npos, line);
}

BOOST_AUTO_TEST_SUITE_END()
