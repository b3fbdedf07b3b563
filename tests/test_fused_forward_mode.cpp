// Forward mode through the fused sequence op (Note [Second order through the fused op],
// nn/src/fused/replay.hpp), op by op on fused::run_sequence given a replay: its JVP against its
// own (hand-written) VJP by the adjoint identity, with and without recording; the HVP
// forward-over-reverse against the generic ops' double backward; what is refused without a
// replay. Then through whole layers: JVP and HVP fused against generic for every cell.

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
struct OneSequence {
    std::shared_ptr<RecurrentCell<double>> cell;
    Tensor<double> x;
    std::vector<Tensor<double>> initial;

    OneSequence(const std::string& name, Generator& g, std::size_t steps = 4, std::size_t batch = 3) {
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

// Sets tangents on tensors for one scope.
template <class T = double>
struct Tangents {
    Tangents(const std::vector<Tensor<T>>& tensors, const std::vector<Tensor<T>>& v) : tensors(tensors) {
        for (std::size_t i = 0; i < tensors.size(); ++i) this->tensors[i].set_tangent(v[i]);
    }
    ~Tangents() {
        for (auto& tensor : tensors) tensor.clear_tangent();
    }
    std::vector<Tensor<T>> tensors;
};

// The layer's parameters, then the input and the given initial states where they take gradients.
template <class T>
std::vector<Tensor<T>> layer_leaves(const Recurrent<T>& layer, const LayerInputs<T>& in) {
    std::vector<Tensor<T>> leaves = layer.parameters();
    if (in.x.requires_grad()) leaves.push_back(in.x);
    leaves.insert(leaves.end(), in.initial.begin(), in.initial.end());
    return leaves;
}

template <class T>
Tensor<T> squares(const RecurrentResult<T>& result) {
    Tensor<T> loss = sum(mul(result.output, result.output));
    for (const auto& s : result.state) loss = add(loss, sum(mul(s, s)));
    return loss;
}

using Named = std::vector<std::pair<std::string, xt::xarray<double>>>;

// The tangents of the output and final states along random directions of every leaf, and the
// HVP of `squares` along them over the same leaves, on the layer's current path: by rw::hvp_leaves
// (forward-over-reverse), or by differentiating the gradient again (reverse-over-reverse).
Named layer_forward_mode(Recurrent<double>& layer, const Config& c, std::uint64_t seed, bool forward_over_reverse) {
    Generator g(seed);
    const LayerInputs<double> in = draw_inputs(layer, c, g);
    const std::vector<Tensor<double>> leaves = layer_leaves(layer, in);
    const std::vector<Tensor<double>> v = random_like(leaves, g);
    Named named;
    {
        Tangents on(leaves, v);
        const auto result = layer.forward(in.x, in.initial, in.lengths);
        BOOST_TEST_REQUIRE(result.output.has_tangent(), c.to_string());
        named.emplace_back("output tangent", result.output.tangent().value());
        for (std::size_t s = 0; s < result.state.size(); ++s) {
            BOOST_TEST_REQUIRE(result.state[s].has_tangent(), c.to_string());
            named.emplace_back(layer.state_names()[s] + "_n tangent", result.state[s].tangent().value());
        }
    }
    auto loss = [&] { return squares(layer.forward(in.x, in.initial, in.lengths)); };
    std::vector<Tensor<double>> gradient, product;
    if (forward_over_reverse) {
        const HvpResult<double> h = hvp_leaves<double>(loss, leaves, v);
        gradient = h.gradient;
        product = h.product;
    } else {
        gradient = rw::grad<double>({loss()}, leaves, {}, {.create_graph = true});
        Tensor<double> along;
        for (std::size_t i = 0; i < leaves.size(); ++i) {
            const Tensor<double> term = sum(mul(gradient[i], v[i]));
            along = along.defined() ? add(along, term) : term;
        }
        product = rw::grad<double>({along}, leaves);
    }
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        named.emplace_back(fmt::format("gradient {}", i), gradient[i].value());
        named.emplace_back(fmt::format("H v {}", i), product[i].value());
    }
    return named;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_forward_mode)

BOOST_AUTO_TEST_CASE(the_fused_jvp_meets_the_fused_vjp_in_the_adjoint_identity_for_every_cell) {
    // <J v, u> = <v, Jᵀ u>: J v from the op's forward rule (the replay), Jᵀ u from its fused
    // backward; no finite differences, so 1e-12.
    for (const auto& name : cells) {
        if (name == "ln_lstm") continue;  // hands the driver slices (test_fused_second_order.cpp)
        Generator g(21);
        OneSequence sequence(name, g);
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
    OneSequence sequence("gru", g);
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
        OneSequence sequence(name, g);
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

BOOST_AUTO_TEST_CASE(jvp_and_forward_over_reverse_hvp_through_the_fused_layer_equal_the_generic_layers) {
    Generator g(25);
    for (const auto& cell : cells) {
        if (cell == "ln_lstm") continue;
        for (int round = 0; round < 3; ++round) {
            const Config c = small_random_config(cell, g);
            BOOST_TEST_MESSAGE(c.to_string());
            auto layer = make_layer<double>(c, ExecutionPath::fused, 50 + round);
            const Named fused = layer_forward_mode(*layer, c, 60 + round, true);
            BOOST_TEST_REQUIRE(layer->uses_fused(), c.to_string() << ": " << layer->path_note());
            layer->set_path(ExecutionPath::generic);
            // The reference HVP is reverse-over-reverse on the generic path: a route that shares
            // nothing with the fused op's forward-over-reverse one.
            const Named generic = layer_forward_mode(*layer, c, 60 + round, false);
            BOOST_REQUIRE_EQUAL(fused.size(), generic.size());
            for (std::size_t i = 0; i < fused.size(); ++i)
                BOOST_TEST(relative_error(fused[i].second, generic[i].second) <= 1e-12,
                           c.to_string() << ": " << fused[i].first << " differs by "
                                         << relative_error(fused[i].second, generic[i].second));
        }
    }
}

BOOST_AUTO_TEST_CASE(without_a_replay_tangents_are_refused_naming_the_op_and_the_replay) {
    // A cell without tangent rules (the MGU): the built-in cells' sweeps need no replay.
    Generator g(24);
    OneSequence sequence("mgu", g);
    Tangents<double> on({sequence.x}, {random_tensor<double>(sequence.x.shape(), g)});
    try {
        sequence.fused(false);
        BOOST_FAIL("expected GraphError");
    } catch (const GraphError& error) {
        const std::string message = error.what();
        BOOST_TEST(message.find("'fused_cell'") != std::string::npos, message);  // the MGU names no kind
        BOOST_TEST(message.find("without a replay") != std::string::npos, message);
    }
}

BOOST_AUTO_TEST_SUITE_END()
