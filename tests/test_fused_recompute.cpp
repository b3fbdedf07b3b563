// test_fused's recompute suite (layers that keep every k-th state), on the harness of
// fused_harness.hpp.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"
#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;
using testing::random_tensor;

// Recomputation (recompute.hpp): a layer that keeps only every k-th state and reruns segments in
// backward gives the numbers of the layer that keeps every step, on both paths.
BOOST_AUTO_TEST_SUITE(recompute)

namespace {

// The same layer and data run keeping every step and with segments of `segment` steps; every
// output and gradient within `tolerance` (relative), and the segments really used.
void compare_recomputation(const Config& c, ExecutionPath path, std::size_t segment, std::uint64_t seed) {
    auto full = make_layer<double>(c, path, seed);
    const RunResult<double> kept = run<double>(*full, c, seed + 1);
    BOOST_TEST_REQUIRE(full->last_recompute_segment() == 0u);
    auto layer = make_layer<double>(c, path, seed);
    layer->set_recompute({.enabled = true, .segment = segment});
    const RunResult<double> rerun = run<double>(*layer, c, seed + 1);
    BOOST_TEST_REQUIRE(layer->last_recompute_segment() == segment, c.to_string());
    BOOST_TEST_REQUIRE(layer->uses_fused() == (path == ExecutionPath::fused), c.to_string() << layer->path_note());
    expect_same_results(rerun, kept, 1e-12, fmt::format("segment {} on {}", segment, c.to_string()));
}

// Random configurations of at least two steps, each with a random segment length below T.
void property_test_recomputation(ExecutionPath path, std::size_t cases, std::uint64_t seed) {
    Generator g(seed);
    for (std::size_t i = 0; i < cases; ++i) {
        Config c = random_config(g, 30);
        c.steps = std::max<std::size_t>(c.steps, 2);
        for (auto& length : c.lengths) length = std::min<std::int64_t>(length, std::int64_t(c.steps));
        const std::size_t segment = 1 + static_cast<std::size_t>(g.uniform(0, 1) * double(c.steps - 1)) % (c.steps - 1);
        compare_recomputation(c, path, segment, seed * 100 + i);
    }
}

}  // namespace

BOOST_AUTO_TEST_CASE(fused_recomputation_matches_keeping_every_step) {
    property_test_recomputation(ExecutionPath::fused, 60, 71);
}

BOOST_AUTO_TEST_CASE(generic_recomputation_matches_keeping_every_step) {
    property_test_recomputation(ExecutionPath::generic, 25, 72);
}

BOOST_AUTO_TEST_CASE(every_cell_with_lengths_and_both_directions_recomputes_exactly) {
    for (const auto& cell : cells) {
        Config c;
        c.cell = cell;
        c.steps = 11;
        c.batch = 4;
        c.input = 5;
        c.hidden = 9;
        c.layers = 2;
        c.bidirectional = true;
        c.lengths = {11, 3, 7, 1};
        c.given_state = true;
        for (std::size_t segment : {1u, 3u, 4u, 10u}) {
            compare_recomputation(c, ExecutionPath::fused, segment, 900 + segment);
            compare_recomputation(c, ExecutionPath::generic, segment, 900 + segment);
        }
    }
}

BOOST_AUTO_TEST_CASE(gradcheck_passes_with_recomputation_on_both_paths) {
    for (auto path : {ExecutionPath::fused, ExecutionPath::generic}) {
        auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                       .path = path, .recompute = {.enabled = true, .segment = 2}});
        Generator g(12);
        const Tensor<double> x = random_tensor<double>({5, 3, 3}, g, 1.0, true);
        const std::vector<Tensor<double>> initial{random_tensor<double>({4, 3, 4}, g, 0.5, true),
                                                  random_tensor<double>({4, 3, 4}, g, 0.5, true)};
        const GradcheckReport report = gradcheck_layer(*lstm, x, initial, std::vector<std::int64_t>{5, 2, 4});
        BOOST_TEST(report.passed, report.to_string());
        BOOST_TEST(lstm->last_recompute_segment() == 2u);
        BOOST_TEST(lstm->uses_fused() == (path == ExecutionPath::fused));
    }
}

BOOST_AUTO_TEST_CASE(the_fused_driver_keeps_fewer_bytes_when_recomputing) {
    auto peak_of = [](const RecomputeOptions& recompute) {
        auto lstm = make_lstm<float>({.input_size = 8, .hidden_size = 32, .recompute = recompute});
        Generator g(5);
        auto x = random_tensor<float>({400, 4, 8}, g, 1.0, true);
        fused::reset_driver_memory_peak();
        const std::size_t before = fused::driver_memory().live;
        auto result = lstm->forward(x);
        backward<float>({sum(result.output)}, {Tensor<float>()});
        return fused::driver_memory().peak - before;
    };
    const std::size_t full = peak_of({});
    const std::size_t segmented = peak_of({.enabled = true});  // segments of 20 steps
    const std::size_t step = fused::saved_bytes_per_step(cell_info("lstm").layout, 4, 32, sizeof(float));
    BOOST_TEST_MESSAGE(fmt::format("driver peak: {} bytes keeping every step, {} recomputing", full, segmented));
    BOOST_TEST(full >= 400 * step);
    BOOST_TEST(segmented * 5 < full);
}

BOOST_AUTO_TEST_CASE(the_segment_length_follows_the_options) {
    BOOST_TEST(recompute_segment({}, 10000, 100, 10) == 0u);
    BOOST_TEST(recompute_segment({.enabled = true}, 10000, 100, 10) == 100u);
    BOOST_TEST(recompute_segment({.enabled = true}, 10, 100, 10) == 4u);
    BOOST_TEST(recompute_segment({.enabled = true, .segment = 7}, 100, 100, 10) == 7u);
    BOOST_TEST(recompute_segment({.enabled = true, .segment = 100}, 100, 100, 10) == 0u);
    // Everything fits: nothing to recompute.
    BOOST_TEST(recompute_segment({.enabled = true, .memory_budget = 100000}, 1000, 100, 10) == 0u);
    // The longest segment whose footprint fits: k steps plus ceil(1000 / k) checkpoints.
    const std::size_t k = recompute_segment({.enabled = true, .memory_budget = 20000}, 1000, 100, 10);
    BOOST_TEST(recompute_footprint(1000, k, 100, 10) <= 20000u);
    BOOST_TEST(recompute_footprint(1000, k + 1, 100, 10) > 20000u);
    testing::expect_error<std::invalid_argument>(
        [] { recompute_segment({.enabled = true, .memory_budget = 100}, 1000, 100, 10); },
        {"memory budget of 100 bytes", "smallest footprint for 1000 steps"});
}

BOOST_AUTO_TEST_CASE(a_step_observer_turns_recomputation_off) {
    auto gru = make_gru<double>({.input_size = 2, .hidden_size = 3, .recompute = {.enabled = true, .segment = 2}});
    std::size_t seen = 0;
    gru->set_step_observer([&](std::size_t, std::size_t, std::size_t, const Tensor<double>&) { ++seen; });
    Generator g(1);
    gru->forward(random_tensor<double>({6, 2, 2}, g, 1.0, true));
    BOOST_TEST(seen == 6u);
    BOOST_TEST(gru->last_recompute_segment() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
