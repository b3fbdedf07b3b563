// The fused driver's row groups: with two threads the batch is split and every output and gradient
// equals the one-thread run (harness: fused_harness.hpp). scripts/check-threads runs this suite
// under TSan.

#include <boost/test/unit_test.hpp>

#include <string>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>

#include "fused_harness.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::fused_harness;

// Note [Threads] (nn/src/fused/window.hpp): with two threads the driver splits the batch into row groups.
BOOST_AUTO_TEST_SUITE(row_groups_on_threads)

namespace {

// Sets the GEMM layer's threads for one scope.
struct ThreadsFor {
    explicit ThreadsFor(int threads) : before(blas::num_threads()) { blas::set_num_threads(threads); }
    ~ThreadsFor() { blas::set_num_threads(before); }
    int before;
};

}  // namespace

BOOST_AUTO_TEST_CASE(two_threads_split_the_batch_and_give_the_one_thread_numbers) {
    Generator g(81);
    std::size_t checked = 0;
    while (checked < 30) {
        Config c = random_config(g, 25);
        if (c.batch < 8) continue;
        auto one = make_layer<double>(c, ExecutionPath::fused, 700 + checked);
        RunResult<double> single;
        {
            ThreadsFor threads(1);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 1u);
            single = run<double>(*one, c, 800 + checked);
        }
        auto two = make_layer<double>(c, ExecutionPath::fused, 700 + checked);
        if (c.steps > 2) two->set_recompute({.enabled = true, .segment = c.steps / 2});  // windows on threads too
        RunResult<double> split;
        {
            ThreadsFor threads(2);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 2u);
            split = run<double>(*two, c, 800 + checked);
        }
        BOOST_TEST_REQUIRE(two->uses_fused());
        expect_same_results(split, single, 1e-12, "two threads on " + c.to_string());
        ++checked;
    }
}

// float runs its recurrent products on oneDNN's packed matmul: one primitive per shape, executed
// by both threads at once.
BOOST_AUTO_TEST_CASE(two_threads_in_float32_give_the_one_thread_numbers) {
    for (const std::string cell : {"lstm", "gru", "rnn_tanh"}) {
        Config c;
        c.cell = cell;
        c.steps = 30;
        c.batch = 16;
        c.input = 24;
        c.hidden = 40;
        c.bidirectional = true;
        c.lengths = {30, 2, 17, 30, 9, 30, 1, 30, 30, 5, 30, 30, 12, 30, 30, 3};
        RunResult<float> single, split;
        {
            ThreadsFor threads(1);
            single = run<float>(*make_layer<float>(c, ExecutionPath::fused, 5), c, 6);
        }
        {
            ThreadsFor threads(2);
            BOOST_TEST_REQUIRE(fused::row_groups(c.batch) == 2u);
            split = run<float>(*make_layer<float>(c, ExecutionPath::fused, 5), c, 6);
        }
        expect_same_results(split, single, 1e-5, "two threads, float32, " + cell);
    }
}

BOOST_AUTO_TEST_CASE(groups_keep_at_least_four_rows) {
    ThreadsFor threads(2);
    BOOST_TEST(fused::row_groups(1) == 1u);
    BOOST_TEST(fused::row_groups(7) == 1u);
    BOOST_TEST(fused::row_groups(8) == 2u);
    BOOST_TEST(fused::row_groups(32) == 2u);
}

BOOST_AUTO_TEST_SUITE_END()
