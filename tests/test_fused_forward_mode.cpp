// Forward mode through the fused sequence op (Note [Second order through the fused op],
// nn/src/fused/replay.hpp), op by op on fused::run_sequence given a replay: its JVP against its
// own (hand-written) VJP by the adjoint identity, with and without recording; the HVP
// forward-over-reverse against the generic ops' double backward; what is refused without a replay.

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;
using testing::random_tensor;

namespace {

// One cell of `name` run over a whole sequence, fused with its generic replay, and the leaves a
// derivative is taken over: x, the initial states and the cell's parameters.
struct Sequence {
    std::shared_ptr<RecurrentCell<double>> cell;
    Tensor<double> x;
    std::vector<Tensor<double>> initial;

    Sequence(const std::string& name, Generator& g, std::size_t steps = 4, std::size_t batch = 3) {
        const std::size_t input = 3, hidden = 5;
        cell = factory_of<double>(name)({.input_size = input, .hidden_size = hidden}, g);
        x = random_tensor<double>({steps, batch, input}, g, 1.0, true);
        for (std::size_t s = 0; s < cell->state_count(); ++s)
            initial.push_back(random_tensor<double>({batch, cell->state_size(s)}, g, 0.8, true));
    }

    std::vector<Tensor<double>> leaves() const {
        std::vector<Tensor<double>> all{x};
        all.insert(all.end(), initial.begin(), initial.end());
        for (const auto& p : cell->parameters()) all.push_back(p);
        return all;
    }

    // The steps with the cell's generic ops: what a layer hands run_sequence.
    fused::SequenceReplay<double> replay() const {
        return [cell = cell](const std::vector<Tensor<double>>& in) {
            const std::vector<Tensor<double>> prepared = unstack(cell->prepare_input(in[0]), 0);
            State<double> state(in.begin() + 1, in.end());
            std::vector<Tensor<double>> outputs;
            for (const auto& p : prepared) {
                state = cell->step(p, state);
                outputs.push_back(state[0]);
            }
            std::vector<Tensor<double>> results{stack(outputs, 0)};
            results.insert(results.end(), state.begin(), state.end());
            return results;
        };
    }

    std::vector<Tensor<double>> fused(bool with_replay = true) const {
        const std::shared_ptr<const fused::CellRules<double>> rules(cell, cell->usable_fused_rules());
        auto result = fused::run_sequence<double>(rules, x, initial, {}, false, cell->kind(), 0,
                                                  with_replay ? replay() : fused::SequenceReplay<double>());
        std::vector<Tensor<double>> outputs{result.output};
        outputs.insert(outputs.end(), result.final_state.begin(), result.final_state.end());
        return outputs;
    }
};

double dot(const Tensor<double>& a, const Tensor<double>& b) { return xt::sum(a.value() * b.value())(); }

std::vector<Tensor<double>> random_like(const std::vector<Tensor<double>>& tensors, Generator& g) {
    std::vector<Tensor<double>> out;
    for (const auto& t : tensors) out.push_back(random_tensor<double>(t.shape(), g, 1.0));
    return out;
}

// Sets tangents on leaves for one scope.
struct Tangents {
    Tangents(const std::vector<Tensor<double>>& leaves, const std::vector<Tensor<double>>& v) : leaves(leaves) {
        for (std::size_t i = 0; i < leaves.size(); ++i) this->leaves[i].set_tangent(v[i]);
    }
    ~Tangents() {
        for (auto& leaf : leaves) leaf.clear_tangent();
    }
    std::vector<Tensor<double>> leaves;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_forward_mode)

BOOST_AUTO_TEST_CASE(the_fused_jvp_meets_the_fused_vjp_in_the_adjoint_identity_for_every_cell) {
    // <J v, u> = <v, Jᵀ u>: J v from the op's forward rule (the replay), Jᵀ u from its fused
    // backward; no finite differences, so 1e-12.
    for (const auto& name : cells) {
        if (name == "ln_lstm") continue;  // hands the driver slices (test_fused_second_order.cpp)
        Generator g(21);
        Sequence sequence(name, g);
        const auto leaves = sequence.leaves();
        const auto v = random_like(leaves, g);
        std::vector<Tensor<double>> outputs, tangents;
        {
            Tangents on(leaves, v);
            outputs = sequence.fused();
            for (auto& o : outputs) {
                BOOST_TEST_REQUIRE(o.has_tangent(), name);
                tangents.push_back(o.tangent());
            }
        }
        BOOST_TEST(outputs[0].grad_fn()->name().rfind("fused_", 0) == 0u);
        const auto u = random_like(outputs, g);
        const auto vjp = rw::grad<double>(outputs, leaves, u);
        double forward = 0, reverse = 0, scale = 0;
        for (std::size_t o = 0; o < outputs.size(); ++o) forward += dot(tangents[o], u[o]);
        for (std::size_t i = 0; i < leaves.size(); ++i) {
            reverse += dot(v[i], vjp[i]);
            scale += std::abs(dot(v[i], vjp[i]));
        }
        BOOST_TEST(std::abs(forward - reverse) <= 1e-12 * scale, name << ": <Jv, u> " << forward << " vs <v, Jᵀu> " << reverse);
    }
}

BOOST_AUTO_TEST_CASE(the_inference_forward_gives_the_same_tangents_as_the_recorded_one) {
    Generator g(22);
    Sequence sequence("gru", g);
    const auto leaves = sequence.leaves();
    const auto v = random_like(leaves, g);
    Tangents on(leaves, v);
    const auto recorded = sequence.fused();
    std::vector<Tensor<double>> inferred;
    {
        NoGradGuard inference;
        inferred = sequence.fused();
    }
    BOOST_TEST(!inferred[0].grad_fn());
    for (std::size_t o = 0; o < recorded.size(); ++o) {
        BOOST_TEST_REQUIRE(inferred[o].has_tangent());
        BOOST_TEST(testing::max_abs_difference(inferred[o].tangent().value(), recorded[o].tangent().value()) == 0.0);
    }
}

BOOST_AUTO_TEST_CASE(the_fused_hvp_forward_over_reverse_equals_the_generic_double_backward) {
    for (const auto& name : {"lstm", "gru", "rnn_tanh", "mgu", "indrnn"}) {
        Generator g(23);
        Sequence sequence(name, g);
        const auto leaves = sequence.leaves();
        const auto v = random_like(leaves, g);
        // Quadratic in the outputs, so dL/d(outputs) carries a tangent of its own (Jᵀ u's u).
        auto loss_of = [](const std::vector<Tensor<double>>& outputs) {
            Tensor<double> loss = sum(mul(outputs[0], outputs[0]));
            for (std::size_t o = 1; o < outputs.size(); ++o) loss = add(loss, sum(mul(outputs[o], outputs[o])));
            return loss;
        };
        const HvpResult<double> fused = hvp_leaves<double>([&] { return loss_of(sequence.fused()); }, leaves, v);
        // The reference: the generic replay's gradient, differentiated again.
        const std::vector<Tensor<double>> arguments(leaves.begin(), leaves.begin() + 1 + sequence.initial.size());
        const auto generic = rw::grad<double>({loss_of(sequence.replay()(arguments))}, leaves, {}, {.create_graph = true});
        Tensor<double> along;
        for (std::size_t i = 0; i < leaves.size(); ++i) {
            const Tensor<double> term = sum(mul(generic[i], v[i]));
            along = along.defined() ? add(along, term) : term;
        }
        const auto product = rw::grad<double>({along}, leaves);
        for (std::size_t i = 0; i < leaves.size(); ++i) {
            BOOST_TEST(relative_error(fused.gradient[i].value(), generic[i].value()) <= 1e-12, name << " gradient " << i);
            BOOST_TEST(relative_error(fused.product[i].value(), product[i].value()) <= 1e-12, name << " H v " << i);
        }
    }
}

BOOST_AUTO_TEST_CASE(without_a_replay_tangents_are_refused_naming_the_op_and_the_replay) {
    Generator g(24);
    Sequence sequence("lstm", g);
    Tangents on({sequence.x}, {random_tensor<double>(sequence.x.shape(), g)});
    try {
        sequence.fused(false);
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("'fused_lstm'") != std::string::npos, message);
        BOOST_TEST(message.find("without a replay") != std::string::npos, message);
    }
}

BOOST_AUTO_TEST_SUITE_END()
