// test_fused's inference suite: a forward with nothing to record (NoGradGuard) through the fused
// driver keeps nothing for a backward and gives the recorded forward's numbers
// (Note [Inference], nn/src/fused/window.hpp).

#include <boost/test/unit_test.hpp>

#include <optional>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;
using testing::random_tensor;

BOOST_AUTO_TEST_SUITE(inference)

namespace {

// The driver's peak bytes over one forward of an LSTM (I=8, H=32) on [steps, 4, 8], recorded or
// under NoGradGuard.
std::size_t forward_peak(std::size_t steps, bool no_grad) {
    auto lstm = make_lstm<float>({.input_size = 8, .hidden_size = 32});
    Generator g(5);
    auto x = random_tensor<float>({steps, 4, 8}, g, 1.0, true);
    std::optional<NoGradGuard> guard;
    if (no_grad) guard.emplace();
    fused::reset_driver_memory_peak();
    const std::size_t before = fused::driver_memory().live;
    auto result = lstm->forward(x);
    BOOST_TEST_REQUIRE(lstm->uses_fused());
    BOOST_TEST_REQUIRE(result.output.requires_grad() == !no_grad);
    return fused::driver_memory().peak - before;
}

// The layer's outputs and final states, recorded and under NoGradGuard, with the same data.
std::vector<std::pair<std::string, xt::xarray<double>>> forward_values(Recurrent<double>& layer, const Config& c,
                                                                        std::uint64_t seed, bool no_grad) {
    Generator g(seed);
    const std::size_t directions = c.bidirectional ? 2 : 1;
    Shape shape = c.batch_first ? Shape{c.batch, c.steps, c.input} : Shape{c.steps, c.batch, c.input};
    Tensor<double> x = random_tensor<double>(shape, g, 1.0, true);
    std::vector<Tensor<double>> initial;
    if (c.given_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s)
            initial.push_back(random_tensor<double>({c.layers * directions, c.batch, layer.state_size(s)}, g, 0.8, true));
    std::optional<std::vector<std::int64_t>> lengths;
    if (!c.lengths.empty()) lengths = c.lengths;
    std::optional<NoGradGuard> guard;
    if (no_grad) guard.emplace();
    const auto result = layer.forward(x, initial, lengths);
    BOOST_TEST_REQUIRE(layer.uses_fused(), c.to_string() << layer.path_note());
    BOOST_TEST_REQUIRE(result.output.requires_grad() == !no_grad);
    std::vector<std::pair<std::string, xt::xarray<double>>> values{{"output", result.output.value()}};
    for (std::size_t s = 0; s < result.state.size(); ++s)
        values.emplace_back(layer.state_names()[s] + "_n", result.state[s].value());
    return values;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_no_grad_forward_keeps_bytes_independent_of_the_sequence_length) {
    const std::size_t short_run = forward_peak(300, true), long_run = forward_peak(1200, true);
    const std::size_t recorded = forward_peak(300, false);
    const std::size_t step = fused::saved_bytes_per_step(cell_info("lstm").layout, 4, 32, sizeof(float));
    BOOST_TEST_MESSAGE(fmt::format("driver peak: no_grad {} bytes at T=300, {} at T=1200; recorded {} at T=300",
                                   short_run, long_run, recorded));
    BOOST_TEST(long_run == short_run);
    BOOST_TEST(recorded >= 300 * step);
    // A window of input projections (at most 256 rows) and two slots of states: under 70 steps' keep.
    BOOST_TEST(long_run < 70 * step);
}

BOOST_AUTO_TEST_CASE(a_no_grad_forward_frees_everything_it_allocated) {
    auto gru = make_gru<float>({.input_size = 8, .hidden_size = 16});
    Generator g(3);
    auto x = random_tensor<float>({500, 2, 8}, g, 1.0, true);
    const std::size_t before = fused::driver_memory().live;
    NoGradGuard guard;
    auto result = gru->forward(x);
    BOOST_TEST(fused::driver_memory().live == before);
    BOOST_TEST(!result.output.requires_grad());
}

// Random layers of every cell, lengths, directions, projections, over several windows (T up to
// 300 at B <= 9: windows of at least 28 steps).
BOOST_AUTO_TEST_CASE(a_no_grad_forward_gives_the_recorded_forwards_outputs) {
    Generator g(2121);
    for (std::size_t i = 0; i < 40; ++i) {
        Config c = random_config(g, 300);
        auto layer = make_layer<double>(c, ExecutionPath::fused, 500 + i);
        const auto recorded = forward_values(*layer, c, 900 + i, false);
        const auto inferred = forward_values(*layer, c, 900 + i, true);
        BOOST_REQUIRE_EQUAL(recorded.size(), inferred.size());
        for (std::size_t v = 0; v < recorded.size(); ++v) {
            const double error = relative_error(inferred[v].second, recorded[v].second);
            BOOST_CHECK_MESSAGE(error <= 1e-13, fmt::format("{}: {} differs by {:.3g} (relative)", c.to_string(),
                                                            recorded[v].first, error));
        }
    }
}

// A finished row keeps its projected h while the others run on, across windows (its state slot
// must not be the one the step writes).
BOOST_AUTO_TEST_CASE(a_no_grad_projected_lstm_keeps_finished_rows_across_windows) {
    for (const bool bidirectional : {false, true}) {
        Config c{.cell = "lstm", .bidirectional = bidirectional, .steps = 300, .batch = 3, .input = 5, .hidden = 7,
                 .lengths = {300, 120, 7}, .proj_size = 3};
        auto layer = make_layer<double>(c, ExecutionPath::fused, 77);
        const auto recorded = forward_values(*layer, c, 78, false);
        const auto inferred = forward_values(*layer, c, 78, true);
        for (std::size_t v = 0; v < recorded.size(); ++v)
            BOOST_TEST(relative_error(inferred[v].second, recorded[v].second) <= 1e-13,
                       c.to_string() << ": " << recorded[v].first);
    }
}

// Two threads: the batch's row groups share the window's slots, each writing its own rows.
BOOST_AUTO_TEST_CASE(a_no_grad_forward_on_two_row_groups_gives_the_recorded_outputs) {
    const int before = blas::num_threads();
    blas::set_num_threads(2);
    for (const std::string cell : {"lstm", "gru", "rnn_tanh"}) {
        Config c{.cell = cell, .bidirectional = true, .steps = 90, .batch = 11, .input = 6, .hidden = 9,
                 .lengths = {90, 3, 90, 60, 90, 90, 1, 90, 45, 90, 90}};
        auto layer = make_layer<double>(c, ExecutionPath::fused, 31);
        BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 2u);
        const auto recorded = forward_values(*layer, c, 32, false);
        const auto inferred = forward_values(*layer, c, 32, true);
        for (std::size_t v = 0; v < recorded.size(); ++v)
            BOOST_TEST(relative_error(inferred[v].second, recorded[v].second) <= 1e-13,
                       c.to_string() << ": " << recorded[v].first);
    }
    blas::set_num_threads(before);
}

BOOST_AUTO_TEST_SUITE_END()
