// Training: truncated BPTT (nn/src/train/tbptt.cpp).

#include <boost/test/unit_test.hpp>

#include "training_checks.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::training_checks;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(training)

// ---- truncated BPTT ----

BOOST_AUTO_TEST_CASE(tbptt_with_one_chunk_equals_full_bptt) {
    const std::size_t steps = 7;
    Stream s = make_stream(steps);
    std::vector<Array> tbptt_grads;
    truncated_bptt<double>(*s.lstm, s.x, {.k1 = steps, .k2 = steps},
                           [&](const Tensor<double>& out, std::size_t b, std::size_t e) { return stream_loss(s, out, b, e); },
                           [&](const TbpttChunk<double>& chunk) {
                               BOOST_TEST(chunk.begin == 0u);
                               BOOST_TEST(chunk.end == steps);
                               for (auto& p : s.lstm->parameters()) tbptt_grads.push_back(p.grad().value());
                           });
    s.lstm->zero_grad();
    stream_loss(s, s.lstm->forward(s.x).output, 0, steps).backward();
    const auto parameters = s.lstm->parameters();
    BOOST_REQUIRE(tbptt_grads.size() == parameters.size());
    for (std::size_t i = 0; i < parameters.size(); ++i)
        BOOST_TEST(max_abs_difference(parameters[i].grad().value(), tbptt_grads[i]) <= 1e-13);
}

BOOST_AUTO_TEST_CASE(tbptt_trains_an_embedding_in_front_of_the_layer_window_by_window) {
    // The input of each window is built by the callback, so the embedding is on every window's
    // graph: its gradient accumulates over chunks, and with k1 = k2 = T it equals full BPTT's.
    const std::size_t steps = 8;
    Generator generator(9);
    Embedding<double> embedding(5, 3, generator);
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .seed = 3});
    xt::xarray<std::int64_t> tokens = xt::xarray<std::int64_t>::from_shape({steps, 2});
    for (auto& token : tokens) token = std::int64_t(generator.uniform(0, 5)) % 5;
    auto window_input = [&](std::size_t from, std::size_t to) {
        return embedding.forward(xt::eval(xt::view(tokens, xt::range(from, to), xt::all())));
    };
    auto loss = [](const Tensor<double>& outputs, std::size_t, std::size_t) { return sum(outputs * outputs); };

    std::size_t chunks = 0;
    truncated_bptt<double>(*lstm, steps, window_input, {.k1 = 3, .k2 = 4}, loss,
                           [&](const TbpttChunk<double>&) { ++chunks; });
    BOOST_TEST(chunks == 3u);
    BOOST_TEST(xt::amax(xt::abs(embedding.weight().grad().value()))() > 0.0);

    embedding.zero_grad();
    lstm->zero_grad();
    truncated_bptt<double>(*lstm, steps, window_input, {.k1 = steps, .k2 = steps}, loss, [](const TbpttChunk<double>&) {});
    const xt::xarray<double> tbptt_grad = embedding.weight().grad().value();
    embedding.zero_grad();
    loss(lstm->forward(window_input(0, steps)).output, 0, steps).backward();
    BOOST_TEST(max_abs_difference(embedding.weight().grad().value(), tbptt_grad) <= 1e-13);
}

BOOST_AUTO_TEST_CASE(tbptt_rejects_a_window_input_of_the_wrong_length) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .seed = 3});
    auto wrong = [](std::size_t, std::size_t) { return Tensor<double>(xt::xarray<double>::from_shape({1, 2, 3})); };
    auto loss = [](const Tensor<double>& outputs, std::size_t, std::size_t) { return sum(outputs); };
    BOOST_CHECK_EXCEPTION(truncated_bptt<double>(*lstm, 6, wrong, {.k1 = 3}, loss, [](const TbpttChunk<double>&) {}),
                          ShapeError, [](const ShapeError& e) {
                              return std::string(e.what()).find("the input of steps [0, 3) must be [3, B, I]") !=
                                     std::string::npos;
                          });
}

BOOST_AUTO_TEST_CASE(tbptt_gradients_reach_back_k2_steps_and_no_further) {
    const std::size_t steps = 11, k1 = 2, k2 = 5;
    Stream s = make_stream(steps);
    // The observer sees the steps of each window in order, so a clock gives their stream time.
    std::size_t clock = 0;
    std::set<std::size_t> reached;
    s.lstm->set_step_observer([&](std::size_t, std::size_t, std::size_t, const Tensor<double>& hidden) {
        Tensor<double> h = hidden;
        h.register_hook([&reached, t = clock++](const Tensor<double>& grad) {
            if (xt::any(xt::not_equal(grad.value(), 0.0))) reached.insert(t);
        });
    });
    std::size_t chunks = 0;
    truncated_bptt<double>(*s.lstm, s.x, {.k1 = k1, .k2 = k2},
                           [&](const Tensor<double>& out, std::size_t b, std::size_t e) { return stream_loss(s, out, b, e); },
                           [&](const TbpttChunk<double>& chunk) {
                               const std::size_t window = chunk.end > k2 ? chunk.end - k2 : 0;
                               BOOST_TEST(chunk.window_begin == window);
                               BOOST_TEST(chunk.end - chunk.begin == std::min(k1, steps - chunk.begin));
                               // Every step of the window, and nothing before it, got a gradient.
                               BOOST_TEST(reached.size() == chunk.end - window);
                               BOOST_TEST(*reached.begin() == window);
                               BOOST_TEST(*reached.rbegin() == chunk.end - 1);
                               reached.clear();
                               const std::size_t next_end = std::min(chunk.end + k1, steps);
                               clock = next_end > k2 ? next_end - k2 : 0;
                               s.lstm->zero_grad();
                               ++chunks;
                           });
    BOOST_TEST(chunks == 6u);
}

BOOST_AUTO_TEST_CASE(tbptt_carries_the_true_final_state_of_each_chunk) {
    const std::size_t steps = 11;
    for (auto options : {TbpttOptions{.k1 = 3, .k2 = 5}, TbpttOptions{.k1 = 4, .k2 = 4}}) {
        Stream s = make_stream(steps);
        auto final_state = truncated_bptt<double>(
            *s.lstm, s.x, options,
            [&](const Tensor<double>& out, std::size_t b, std::size_t e) { return stream_loss(s, out, b, e); },
            [&](const TbpttChunk<double>& chunk) {
                // No update in between, so the state must be the full forward's state at the chunk's end.
                NoGradGuard no_grad;
                const auto full = s.lstm->forward(slice(s.x, 0, 0, chunk.end)).state;
                for (std::size_t i = 0; i < full.size(); ++i)
                    BOOST_TEST(max_abs_difference(chunk.final_state[i].value(), full[i].value()) <= 1e-13,
                               "chunk ending at " << chunk.end << ", state " << i);
                BOOST_TEST(!chunk.final_state[0].requires_grad());
                s.lstm->zero_grad();
            });
        const auto full = s.lstm->forward(s.x).state;
        BOOST_TEST(max_abs_difference(final_state[1].value(), full[1].value()) <= 1e-13);
    }
}

BOOST_AUTO_TEST_SUITE_END()
