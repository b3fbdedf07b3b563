// Which path a fused layer takes and says it took (a subclass that overrides step(), a cell
// without rules, a step observer), what the fused op records on the tape (one op per layer and
// direction, weight_hr as an input, the cells kept alive by the graph), the bytes backward keeps
// per step, direct calls' argument checks, and the table of cells.

#include <boost/test/unit_test.hpp>

#include <string>
#include <typeinfo>
#include <vector>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;
using testing::random_tensor;

BOOST_AUTO_TEST_SUITE(fused_kernels)

BOOST_AUTO_TEST_CASE(records_one_op_per_layer_and_direction) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 1});
    Generator g(1);
    auto x = random_tensor<double>({5, 2, 3}, g, 1.0, true);
    auto result = lstm->forward(x);
    BOOST_REQUIRE(result.output.grad_fn());
    BOOST_TEST(result.output.grad_fn()->name() == "fused_lstm");
    BOOST_TEST(result.output.grad_fn()->inputs().size() == 7u);  // x, 4 parameters, h0, c0
    BOOST_TEST(result.output.grad_fn()->num_outputs() == 3u);
}

BOOST_AUTO_TEST_CASE(saved_bytes_per_step_counts_what_backward_keeps) {
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("lstm").layout, 2, 10, 4) == 2u * (40 + 10 + 10) * 4);
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("gru").layout, 2, 10, 8) == 2u * (30 + 10 + 10) * 8);
    BOOST_TEST(fused::saved_bytes_per_step(cell_info("rnn_tanh").layout, 1, 10, 4) == (10u + 10) * 4);
    // With a projection to P = 3: h before the step has 3 units, and m [H] is kept for dW_hr.
    fused::CellLayout projected = cell_info("lstm").layout;
    projected.projection = true;
    BOOST_TEST(fused::saved_bytes_per_step(projected, 2, 10, 4, false, 3) == 2u * (40 + 3 + 10 + 10) * 4);
}

// An LSTM's rules under a layout that does not fit its weights.
struct MislaidRules : fused::CellRules<float> {
    explicit MislaidRules(const LSTMCell<float>& cell) : cell(cell) {}
    const std::type_info& rules_cell_type() const override { return typeid(LSTMCell<float>); }
    fused::CellLayout layout() const override { return {.gates = 3, .states = 1, .recurrent = 3}; }
    fused::CellWeights<float> weights() const override { return cell.weights(); }
    void forward(const fused::ForwardRow<float>&) const override {}
    void backward(const fused::BackwardRow<float>&) const override {}
    const LSTMCell<float>& cell;
};

BOOST_AUTO_TEST_CASE(direct_calls_check_their_arguments) {
    Generator g(4);
    auto x = random_tensor<float>({3, 2, 5}, g);
    const auto lstm = std::make_shared<const LSTMCell<float>>(5, 4, g);
    const std::shared_ptr<const fused::CellRules<float>> rules(lstm, lstm->usable_fused_rules());
    auto h0 = Tensor<float>::zeros({2, 4});
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, x, {h0}, {}, false, "lstm"),
                      std::invalid_argument);  // LSTM needs c0
    BOOST_CHECK_THROW(fused::run_sequence<float>(std::make_shared<MislaidRules>(*lstm), x, {h0}, {}, false, "mislaid"),
                      std::invalid_argument);  // 16 rows are not 3 * H
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, random_tensor<float>({3, 2, 6}, g), {h0, h0}, {}, false, "lstm"),
                      ShapeError);  // the input size is not weight_ih's
    BOOST_CHECK_THROW(fused::run_sequence<float>(rules, x, {h0, h0}, {4, 1}, false, "lstm"),
                      std::invalid_argument);  // a length beyond T
    auto result = fused::run_sequence<float>(rules, x, {h0, h0}, {3, 1}, true, "lstm");
    BOOST_TEST(result.output.shape() == (Shape{3, 2, 4}));
    BOOST_TEST(result.final_state.size() == 2u);
}

// An LSTM's own rules, counting how many copies are alive.
struct CountedRules : fused::CellRules<double> {
    CountedRules(std::shared_ptr<const LSTMCell<double>> cell, int& alive)
        : cell(std::move(cell)), inner(*this->cell->usable_fused_rules()), alive(alive) {
        ++alive;
    }
    ~CountedRules() override { --alive; }
    const std::type_info& rules_cell_type() const override { return inner.rules_cell_type(); }
    fused::CellLayout layout() const override { return inner.layout(); }
    fused::CellWeights<double> weights() const override { return inner.weights(); }
    void forward(const fused::ForwardRow<double>& row) const override { inner.forward(row); }
    void backward(const fused::BackwardRow<double>& row) const override { inner.backward(row); }
    std::shared_ptr<const LSTMCell<double>> cell;
    const fused::CellRules<double>& inner;
    int& alive;
};

BOOST_AUTO_TEST_CASE(a_direct_call_keeps_its_rules_alive_until_the_graph_is_dropped) {
    Generator g(5);
    const auto lstm = std::make_shared<const LSTMCell<double>>(3, 4, g);
    const auto x = random_tensor<double>({4, 2, 3}, g, 1.0, true);
    const std::vector<Tensor<double>> initial{Tensor<double>::zeros({2, 4}), Tensor<double>::zeros({2, 4})};
    const std::shared_ptr<const fused::CellRules<double>> own(lstm, lstm->usable_fused_rules());
    const Tensor<double> expected = rw::grad<double>({sum(fused::run_sequence<double>(own, x, initial, {}, false, "lstm").output)}, {x})[0];
    int alive = 0;
    {
        Tensor<double> loss;
        {
            auto rules = std::make_shared<CountedRules>(lstm, alive);
            loss = sum(fused::run_sequence<double>(std::move(rules), x, initial, {}, false, "lstm").output);
        }
        BOOST_TEST(alive == 1);  // the caller let go; the graph holds them
        const Tensor<double> dx = rw::grad<double>({loss}, {x}, {}, {.retain_graph = true})[0];
        BOOST_TEST(testing::max_abs_difference(dx.value(), expected.value()) == 0.0);
        BOOST_TEST(alive == 1);
    }
    BOOST_TEST(alive == 0);  // the graph is gone, and the rules with it
}

BOOST_AUTO_TEST_CASE(a_direct_call_without_rules_is_refused_with_the_op_name) {
    Generator g(6);
    const auto x = random_tensor<float>({3, 2, 5}, g);
    try {
        fused::run_sequence<float>(nullptr, x, {}, {}, false, "mine");
        BOOST_FAIL("expected std::invalid_argument");
    } catch (const std::invalid_argument& error) {
        BOOST_TEST(std::string(error.what()).find("fused_mine: run_sequence was given no rules") != std::string::npos,
                   error.what());
    }
}

// A subclass that changes step() of a built-in cell: the LSTM with its cell state clipped.
template <class T>
class ClippedLSTMCell : public LSTMCell<T> {
public:
    using LSTMCell<T>::LSTMCell;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override {
        State<T> next = LSTMCell<T>::step(x_t, state);
        next[1] = mul(next[1], Tensor<T>::full(next[1].shape(), T(0.5)));
        return next;
    }
};

BOOST_AUTO_TEST_CASE(a_subclass_that_overrides_step_does_not_inherit_the_fused_rules) {
    RecurrentOptions options{.input_size = 3, .hidden_size = 4, .path = ExecutionPath::fused, .seed = 3};
    auto clipped = std::make_shared<Recurrent<double>>(
        [](const CellSite& site, Generator& g) { return std::make_shared<ClippedLSTMCell<double>>(site.input_size, site.hidden_size, g); },
        options);
    auto plain = make_lstm<double>(options);
    Generator g(8);
    const auto x = random_tensor<double>({5, 2, 3}, g);
    const auto on_subclass = clipped->forward(x);
    BOOST_TEST(!clipped->uses_fused());
    BOOST_TEST(clipped->path_note().find("parent class") != std::string::npos, clipped->path_note());
    // It ran the subclass's own step(): the result is not the plain LSTM's.
    const auto on_lstm = plain->forward(x);
    BOOST_TEST(plain->uses_fused());
    BOOST_TEST(relative_error(on_subclass.output.value(), on_lstm.output.value()) > 1e-3);
    clipped->set_path(ExecutionPath::generic);
    BOOST_TEST(relative_error(clipped->forward(x).output.value(), on_subclass.output.value()) == 0.0);
}

// A user's cell without fused rules.
template <class T>
class PlainCell : public RecurrentCell<T> {
public:
    PlainCell(std::size_t in, std::size_t hidden) : RecurrentCell<T>(in, hidden) {}
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override {
        return {tanh(add(sum(x_t, {1}, true), state[0]))};
    }
};

BOOST_AUTO_TEST_CASE(fused_on_a_cell_without_rules_runs_step_and_says_so) {
    Recurrent<double> layer([](const CellSite& site, Generator&) { return std::make_shared<PlainCell<double>>(site.input_size, site.hidden_size); },
                            {.input_size = 2, .hidden_size = 3, .num_layers = 2, .path = ExecutionPath::fused});
    Generator g(1);
    layer.forward(random_tensor<double>({4, 2, 2}, g));
    BOOST_TEST(!layer.uses_fused());
    BOOST_TEST(layer.path_note() == "layer 0 direction 0: the cell has no fused rules");
    layer.set_path(ExecutionPath::generic);
    layer.forward(random_tensor<double>({4, 2, 2}, g));
    BOOST_TEST(layer.path_note().empty());
}

BOOST_AUTO_TEST_CASE(an_lstm_with_proj_size_runs_on_the_fused_path_with_weight_hr_as_an_input) {
    auto layer = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                    .path = ExecutionPath::fused, .proj_size = 2});
    Generator g(2);
    const auto result = layer->forward(random_tensor<double>({5, 2, 3}, g, 1.0, true));
    BOOST_TEST(layer->uses_fused());
    BOOST_TEST(layer->path_note().empty(), layer->path_note());
    BOOST_TEST(result.output.shape() == Shape({5, 2, 4}));  // D * proj_size
    BOOST_TEST(result.h_n().shape() == Shape({4, 2, 2}));
    BOOST_TEST(result.c_n().shape() == Shape({4, 2, 4}));
    // One op per layer and direction, with weight_hr among its inputs: x, 4 parameters, weight_hr, h0, c0.
    auto one = make_lstm<double>({.input_size = 3, .hidden_size = 4, .proj_size = 2});
    const auto output = one->forward(random_tensor<double>({5, 2, 3}, g, 1.0, true)).output;
    BOOST_REQUIRE(output.grad_fn());
    BOOST_TEST(output.grad_fn()->name() == "fused_lstm");
    BOOST_TEST(output.grad_fn()->inputs().size() == 8u);
    BOOST_TEST(output.grad_fn()->inputs().at(5).shape() == Shape({2, 4}));  // weight_hr [P, H]
}

BOOST_AUTO_TEST_CASE(the_graph_keeps_the_cells_rules_alive_past_the_layer) {
    Generator g(1);
    auto x = random_tensor<double>({4, 2, 3}, g, 1.0, true);
    Tensor<double> loss;
    {
        auto gru = make_gru<double>({.input_size = 3, .hidden_size = 4});
        loss = sum(gru->forward(x).output);
        BOOST_TEST(gru->uses_fused());
    }
    loss.backward();  // the layer is gone; its cells live on with the graph
    BOOST_TEST(x.grad().defined());
}

BOOST_AUTO_TEST_CASE(a_step_observer_runs_step_and_says_so) {
    auto gru = make_gru<double>({.input_size = 2, .hidden_size = 3});
    gru->set_step_observer([](std::size_t, std::size_t, std::size_t, const Tensor<double>&) {});
    Generator g(1);
    gru->forward(random_tensor<double>({3, 1, 2}, g));
    BOOST_TEST(!gru->uses_fused());
    BOOST_TEST(gru->path_note().find("observer") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_table_of_cells_matches_the_cells_it_makes) {
    BOOST_TEST(cell_names() == (std::vector<std::string>{"rnn_tanh", "rnn_relu", "lstm", "gru"}));
    for (const auto& info : cell_table()) {
        BOOST_TEST_CONTEXT(info.name) {
            BOOST_TEST(info.fused);
            BOOST_TEST(info.gate_names.size() == info.gates);
            Generator g(0);
            const auto cell = cell_factory<float>(info.name)({.input_size = 3, .hidden_size = 5}, g);
            BOOST_TEST(cell->kind() == info.name);
            BOOST_TEST(cell->state_names() == info.state_names);
            BOOST_TEST(cell->named_parameters().at(0).second.size(0) == info.gates * 5);
            // Projections where the cell narrows h for proj_size; its rules then say so in the layout.
            const auto projected = cell_factory<float>(info.name, {}, {.proj_size = 2})({.input_size = 3, .hidden_size = 5}, g);
            BOOST_TEST(info.supports_projection == (projected->state_size(0) == 2));
            BOOST_TEST(projected->usable_fused_rules()->layout().projection == info.supports_projection);
        }
    }
    BOOST_TEST(cell_info("lstm").supports_projection);
    BOOST_TEST(!cell_info("gru").supports_projection);
    BOOST_CHECK_EXCEPTION(cell_info("mgu"), std::invalid_argument, [](const std::invalid_argument& e) {
        return std::string(e.what()).find("rnn_tanh, rnn_relu, lstm, gru") != std::string::npos;
    });
}

BOOST_AUTO_TEST_SUITE_END()
