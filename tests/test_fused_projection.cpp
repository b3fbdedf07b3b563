// The fused driver's output projection (fused/cell_rules.hpp): an LSTM with proj_size against
// PyTorch's fixtures on the fused path, asserting that it ran; a user's projected cell through the
// same interface (the projection is the driver's, not the LSTM's); the driver's checks of a
// projected layout. The LSTM's fused vs generic and gradchecks are in test_fused.cpp.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using testing::expect_error;
using testing::random_tensor;
namespace fs = std::filesystem;

namespace {

const fs::path fixtures = fs::path(REWIND_TESTS_DIR) / "fixtures";

// Largest |a - b| / max(1, |b|), b PyTorch's value (as test_cli compares `rewind grad`).
template <class T>
double scaled_difference(const xt::xarray<T>& actual, const xt::xarray<T>& expected) {
    BOOST_REQUIRE(actual.shape() == expected.shape());
    double worst = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const double a = actual.data()[i], b = expected.data()[i];
        worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b)));
    }
    return worst;
}

// One fixture case (tests/make_torch_fixtures.py) on the fused path: the layer from STATE, the
// inputs, the loss sum(output * grad_output) + sum(h_n * grad_h_n) + sum(c_n * grad_c_n).
template <class T>
void check_fixture(const nlohmann::json& c, double tolerance) {
    const fs::path directory = fixtures / c.at("name").get<std::string>();
    const TensorMap inputs = load_safetensors(directory / "inputs.safetensors");
    const TensorMap expected = load_safetensors(directory / "expected.safetensors");
    auto size = [&](const char* key) { return c.at(key).get<std::size_t>(); };
    auto layer = make_lstm<T>({.input_size = size("input_size"), .hidden_size = size("hidden_size"),
                               .num_layers = size("layers"), .bidirectional = c.at("bidirectional").get<bool>(),
                               .path = ExecutionPath::fused, .bias = c.at("bias").get<bool>(),
                               .proj_size = size("proj_size")});
    load_state_dict(*layer, directory / "state.safetensors");
    auto leaf = [&](const std::string& name) { return Tensor<T>(get_array<T>(inputs, name), true); };
    const Tensor<T> x = leaf("x");
    const std::size_t layers_directions = layer->options().num_layers * layer->num_directions();
    // As in PyTorch, a missing h0 or c0 is zeros.
    std::vector<Tensor<T>> initial;
    for (std::size_t s = 0; s < 2; ++s) {
        const std::string name = s == 0 ? "h0" : "c0";
        initial.push_back(inputs.contains(name) ? leaf(name)
                                                : Tensor<T>::zeros({layers_directions, x.size(1), layer->state_size(s)}));
    }
    std::optional<std::vector<std::int64_t>> lengths;
    if (inputs.contains("lengths")) {
        const auto& stored = get_array<std::int64_t>(inputs, "lengths");
        lengths.emplace(stored.begin(), stored.end());
    }
    const auto result = layer->forward(x, initial, lengths);
    BOOST_TEST_REQUIRE(layer->uses_fused(), layer->path_note());

    std::vector<Tensor<T>> roots{result.output}, seeds{Tensor<T>(get_array<T>(inputs, "grad_output"))};
    for (const auto& [seed, index] : {std::pair{"grad_h_n", 0}, std::pair{"grad_c_n", 1}})
        if (inputs.contains(seed)) {
            roots.push_back(result.state[index]);
            seeds.emplace_back(get_array<T>(inputs, seed));
        }
    backward(roots, seeds);

    std::map<std::string, xt::xarray<T>> actual{
        {"output", result.output.value()}, {"h_n", result.h_n().value()}, {"c_n", result.c_n().value()},
        {"grad.x", x.grad().value()}};
    for (std::size_t s = 0; s < 2; ++s)
        if (initial[s].requires_grad()) actual.emplace(s == 0 ? "grad.h0" : "grad.c0", initial[s].grad().value());
    for (const auto& [name, parameter] : layer->named_parameters()) actual.emplace("grad." + name, parameter.grad().value());
    BOOST_TEST(actual.size() == expected.size());
    for (const auto& [name, value] : expected) {
        BOOST_TEST_REQUIRE(actual.contains(name), name << " not computed");
        const double difference = scaled_difference(actual.at(name), get_array<T>(expected, name));
        BOOST_TEST(difference <= tolerance, name << " differs from PyTorch by " << difference);
    }
}

// A user's cell with an output projection: h' = W_p tanh(W_ih x + b + W_hh h), h of width P. Its
// rule is the tanh RNN's; the driver does the projection.
template <class T>
class ProjectedTanhCell : public RecurrentCell<T>, public fused::CellRules<T> {
public:
    ProjectedTanhCell(std::size_t input, std::size_t hidden, std::size_t projected, Generator& g)
        : RecurrentCell<T>(input, hidden), projected_(projected) {
        auto uniform = [&](const Shape& shape) { return Tensor<T>(init::uniform<T>(shape, -0.6, 0.6, g)); };
        weight_ih_ = this->register_parameter("weight_ih", uniform({hidden, input}));
        bias_ = this->register_parameter("bias", uniform({hidden}));
        weight_hh_ = this->register_parameter("weight_hh", uniform({hidden, projected}));
        weight_p_ = this->register_parameter("weight_p", uniform({projected, hidden}));
    }
    std::size_t state_size(std::size_t) const override { return projected_; }
    Tensor<T> prepare_input(const Tensor<T>& input) const override {
        return add(gemm(input, weight_ih_, false, true), bias_);
    }
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override {
        const Tensor<T> m = tanh(add(x_t, gemm(state[0], weight_hh_, false, true)));
        return {gemm(m, weight_p_, false, true)};
    }

    const fused::CellRules<T>* fused_rules() const override { return this; }
    const std::type_info& rules_cell_type() const override { return typeid(ProjectedTanhCell); }
    fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 1, .projection = true}; }
    fused::CellWeights<T> weights() const override {
        return {.input_weight = weight_ih_, .input_bias = bias_, .recurrent_weight = weight_hh_, .projection_weight = weight_p_};
    }
    // m = tanh(a) into next_state[0] (m, not h, under a projection); the gate row keeps m.
    void forward(const fused::ForwardRow<T>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j) row.next_state[0][j] = row.gates[j] = std::tanh(row.gates[j]);
    }
    // grad_state[0] holds dL/dm; h's direct part is zero, so nothing is written back.
    void backward(const fused::BackwardRow<T>& row) const override {
        for (std::size_t j = 0; j < row.hidden; ++j)
            row.grad_gates[j] = row.grad_state[0][j] * (T(1) - row.gates[j] * row.gates[j]);
    }

private:
    std::size_t projected_;
    Tensor<T> weight_ih_, bias_, weight_hh_, weight_p_;
};

template <class T>
std::shared_ptr<Recurrent<T>> projected_tanh_layer(ExecutionPath path) {
    const RecurrentOptions options{.input_size = 3, .hidden_size = 6, .num_layers = 2, .bidirectional = true,
                                   .path = path, .seed = 5, .proj_size = 2};
    return std::make_shared<Recurrent<T>>(
        [](const CellSite& site, Generator& g) { return std::make_shared<ProjectedTanhCell<T>>(site.input_size, site.hidden_size, 2, g); },
        options);
}

// An LSTM with proj_size 2 of hidden 4 and its rules.
struct Projected {
    Generator generator{4};
    std::shared_ptr<const LSTMCell<float>> cell = std::make_shared<const LSTMCell<float>>(
        3, 4, generator, CellInit{}, CellOptions{.proj_size = 2});
    std::shared_ptr<const fused::CellRules<float>> rules{cell, cell->usable_fused_rules()};
};

// The projected LSTM's weights under a layout that does not match them.
struct LayoutMismatch : fused::CellRules<float> {
    LayoutMismatch(const LSTMCell<float>& cell, bool projection, bool weight)
        : cell(cell), projection(projection), weight(weight) {}
    const std::type_info& rules_cell_type() const override { return typeid(LSTMCell<float>); }
    fused::CellLayout layout() const override {
        return {.gates = 4, .states = 2, .recurrent = 4, .projection = projection};
    }
    fused::CellWeights<float> weights() const override {
        fused::CellWeights<float> w = cell.weights();
        if (!weight) w.projection_weight = Tensor<float>();
        return w;
    }
    void forward(const fused::ForwardRow<float>&) const override {}
    void backward(const fused::BackwardRow<float>&) const override {}
    const LSTMCell<float>& cell;
    bool projection, weight;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_projection)

BOOST_AUTO_TEST_CASE(pytorchs_proj_size_fixtures_match_on_the_fused_path) {
    const auto cases = nlohmann::json::parse(std::ifstream(fixtures / "cases.json"));
    std::size_t checked = 0;
    for (const auto& c : cases) {
        if (c.at("proj_size").get<int>() == 0) continue;
        BOOST_TEST_CONTEXT(c.at("name").get<std::string>()) {
            if (c.at("dtype") == "F64") check_fixture<double>(c, 1e-10);
            else check_fixture<float>(c, 1e-4);
            ++checked;
        }
    }
    BOOST_TEST(checked >= 4u);  // one layer; two bidirectional with lengths (f64, f32); three without bias
}

BOOST_AUTO_TEST_CASE(a_users_projected_cell_runs_fused_and_matches_its_generic_path) {
    auto layer = projected_tanh_layer<double>(ExecutionPath::fused);
    Generator g(6);
    const Tensor<double> x = random_tensor<double>({5, 3, 3}, g, 1.0, true);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    const auto fused = layer->forward(x, {}, lengths);
    BOOST_TEST_REQUIRE(layer->uses_fused(), layer->path_note());
    BOOST_TEST(fused.output.shape() == Shape({5, 3, 4}));  // D * P
    layer->set_path(ExecutionPath::generic);
    const auto generic = layer->forward(x, {}, lengths);
    BOOST_TEST(testing::max_abs_difference(fused.output.value(), generic.output.value()) <= 1e-14);
    BOOST_TEST(testing::max_abs_difference(fused.h_n().value(), generic.h_n().value()) <= 1e-14);
}

BOOST_AUTO_TEST_CASE(a_users_projected_cell_passes_gradcheck_and_the_fused_check) {
    auto layer = projected_tanh_layer<double>(ExecutionPath::fused);
    Generator g(6);
    const Tensor<double> x = random_tensor<double>({5, 3, 3}, g, 1.0, true);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    const std::vector<Tensor<double>> initial{random_tensor<double>({4, 3, 2}, g, 0.5, true)};
    const GradcheckReport report = gradcheck_layer(*layer, x, initial, lengths);
    BOOST_TEST(layer->uses_fused());
    BOOST_TEST(report.passed, report.to_string());
    Generator cell_g(1);
    const FusedCheckReport check = check_fused_cell(ProjectedTanhCell<double>(3, 6, 2, cell_g), {.steps = 5, .batch = 3});
    BOOST_TEST(check.passed, check.to_string());
}

BOOST_AUTO_TEST_CASE(an_initial_h_of_the_hidden_width_is_refused_with_the_projected_width) {
    Projected p;
    Generator g(1);
    const auto x = random_tensor<float>({3, 2, 3}, g);
    const std::vector<Tensor<float>> unprojected{Tensor<float>::zeros({2, 4}), Tensor<float>::zeros({2, 4})};
    expect_error<ShapeError>([&] { fused::run_sequence<float>(p.rules, x, unprojected, {}, false, "lstm"); },
                             {"fused_lstm", "initial state 0", "expected [2, 2]", "got [2, 4]"});
    const auto result =
        fused::run_sequence<float>(p.rules, x, {Tensor<float>::zeros({2, 2}), Tensor<float>::zeros({2, 4})}, {}, false, "lstm");
    BOOST_TEST(result.output.shape() == Shape({3, 2, 2}));
    BOOST_TEST(result.final_state.at(1).shape() == Shape({2, 4}));
}

BOOST_AUTO_TEST_CASE(a_projection_and_its_weight_come_together) {
    Projected p;
    Generator g(1);
    const auto x = random_tensor<float>({3, 2, 3}, g);
    const std::vector<Tensor<float>> state{Tensor<float>::zeros({2, 2}), Tensor<float>::zeros({2, 4})};
    expect_error<std::invalid_argument>(
        [&] { fused::run_sequence<float>(std::make_shared<LayoutMismatch>(*p.cell, true, false), x, state, {}, false, "lstm"); },
        {"the layout has a projection", "projection_weight must be [P, H]"});
    expect_error<std::invalid_argument>(
        [&] { fused::run_sequence<float>(std::make_shared<LayoutMismatch>(*p.cell, false, true), x, state, {}, false, "lstm"); },
        {"projection_weight is given but the layout has no projection"});
}

BOOST_AUTO_TEST_SUITE_END()
