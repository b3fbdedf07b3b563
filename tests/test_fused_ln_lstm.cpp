// The layer-normalised LSTM of examples/ln_lstm_cell.hpp, whose fused rules normalise over their
// row: fused against generic (asserting the fused path ran), its rules against the tape step by
// step (check_fused_cell, with a planted mistake named), and gradcheck on the fused path. Its
// training is asserted in test_examples (ln_lstm).

#include <boost/test/unit_test.hpp>

#include "fused_harness.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;

namespace {

// Gains and biases away from LayerNorm's 1 and 0 (where a forgotten gain or bias would not show).
void perturb_norms(Module<double>& cell, std::uint64_t seed) {
    Generator g(seed);
    for (auto& [name, p] : cell.named_parameters())
        if (name.find("layernorm") != std::string::npos)
            for (auto& v : p.mutable_value()) v = name.find("weight") != std::string::npos ? g.uniform(0.5, 1.5) : g.uniform(-0.5, 0.5);
}

// A planted mistake: the gain of the recurrent norm left out of its backward (dx̂ = dy, not dy γ_h).
class RecurrentGainForgotten : public examples::LNLSTMCell<double> {
public:
    using examples::LNLSTMCell<double>::LNLSTMCell;
    const std::type_info& rules_cell_type() const override { return typeid(RecurrentGainForgotten); }
    void backward(const fused::BackwardRow<double>& row) const override {
        // With every recurrent gain 1 for the rule's backward only, the forward keeps the true gains.
        std::vector<double> ones(4 * row.hidden, 1.0);
        std::vector<const double*> units(row.units, row.units + 18);
        for (std::size_t k = 0; k < 4; ++k) units[8 + k] = ones.data() + k * row.hidden;
        fused::BackwardRow<double> changed = row;
        changed.units = units.data();
        examples::LNLSTMCell<double>::backward(changed);
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_ln_lstm)

BOOST_AUTO_TEST_CASE(fused_matches_generic_with_lengths_directions_and_states_in_float64_and_float32) {
    const std::vector<Config> configs{
        {.cell = "ln_lstm", .steps = 5, .batch = 3, .input = 4, .hidden = 7},
        {.cell = "ln_lstm", .layers = 2, .bidirectional = true, .steps = 6, .batch = 4, .input = 3, .hidden = 9,
         .lengths = {6, 2, 5, 1}, .given_state = true},
        {.cell = "ln_lstm", .steps = 4, .batch = 5, .input = 17, .hidden = 33, .initial = InitialState::learned},
        {.cell = "ln_lstm", .steps = 3, .batch = 2, .input = 2, .hidden = 1},  // LN_c over one unit
    };
    for (const auto& c : configs) {
        BOOST_TEST(compare_paths<double>(c, 5, 1e-12) <= 1e-12, c.to_string());
        compare_paths<float>(c, 6, 1e-5);
    }
}

BOOST_AUTO_TEST_CASE(its_rules_agree_with_its_step_at_every_step_and_gradient) {
    Generator g(3);
    examples::LNLSTMCell<double> cell(4, 6, g);
    perturb_norms(cell, 4);
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 6, .batch = 4});
    BOOST_TEST(report.passed, report.to_string());
    BOOST_TEST(report.directions.size() == 2u);
    // Both states and the four gate blocks at every step.
    BOOST_TEST(report.directions[0].steps[0].backward.size() == 6u);
}

BOOST_AUTO_TEST_CASE(a_gain_left_out_of_the_recurrent_norms_backward_is_named) {
    Generator g(3);
    RecurrentGainForgotten cell(4, 6, g);
    perturb_norms(cell, 4);
    const FusedCheckReport report = check_fused_cell(cell, {.steps = 6, .batch = 4});
    BOOST_TEST(!report.passed);
    BOOST_TEST(report.pass == "backward", report.to_string());
    // The gate blocks are right (the input norm's backward is); the recurrent product's gradient
    // reaches dL/dh before the step through W_hh, at the last step already.
    BOOST_TEST(report.step == 5u, report.to_string());
    BOOST_TEST(report.tensor == "h", report.to_string());
}

BOOST_AUTO_TEST_CASE(gradcheck_passes_on_the_fused_path_with_layers_directions_and_lengths) {
    const RecurrentOptions options{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                   .path = ExecutionPath::fused, .seed = 7};
    Recurrent<double> layer(examples::ln_lstm_factory<double>(), options);
    perturb_norms(layer, 8);
    Generator g(11);
    const Tensor<double> x = random_tensor<double>({4, 3, 3}, g, 1.0, true);
    std::vector<Tensor<double>> initial;
    for (std::size_t s = 0; s < 2; ++s) initial.push_back(random_tensor<double>({4, 3, 4}, g, 0.5, true));
    const GradcheckReport report = gradcheck_layer(layer, x, initial, std::vector<std::int64_t>{4, 2, 3});
    BOOST_TEST(layer.uses_fused(), layer.path_note());
    BOOST_TEST(report.passed, report.to_string());
}

BOOST_AUTO_TEST_SUITE_END()
