// Threads: separate models train on separate threads exactly as they do alone. The tape, the
// small-block pools and the fused kernels' scratch space are per thread or per call, and this is
// what scripts/check-threads runs under ThreadSanitizer to show that nothing is shared without a
// guard.

#include <boost/test/unit_test.hpp>

#include <thread>
#include <vector>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/optim.hpp>

namespace {

using rw::nn::ExecutionPath;

// Ten Adam steps of an LSTM on fixed data; the parameters afterwards, flattened.
std::vector<double> train(std::uint64_t seed, ExecutionPath path) {
    auto layer = rw::nn::make_recurrent<double>("lstm", {.input_size = 3, .hidden_size = 4, .num_layers = 2,
                                                          .path = path, .seed = seed});
    rw::nn::Adam<double> adam(layer->named_parameters(), {.lr = 1e-2});
    xt::xarray<double> data = xt::xarray<double>::from_shape({6, 2, 3});
    for (std::size_t i = 0; i < data.size(); ++i) data.data()[i] = 0.1 * double((i * 5 + seed) % 7) - 0.3;
    const rw::Tensor<double> x(data);
    for (int step = 0; step < 10; ++step) {
        adam.zero_grad();
        const auto result = layer->forward(x);
        rw::sum(rw::mul(result.output, result.output)).backward();
        adam.step();
    }
    std::vector<double> flat;
    for (const auto& parameter : layer->parameters())
        flat.insert(flat.end(), parameter.value().begin(), parameter.value().end());
    return flat;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(threads)

BOOST_AUTO_TEST_CASE(separate_models_on_separate_threads_train_as_they_do_alone) {
    for (const ExecutionPath path : {ExecutionPath::generic, ExecutionPath::fused}) {
        const std::vector<double> alone_a = train(1, path), alone_b = train(2, path);
        std::vector<double> threaded_a, threaded_b;
        std::thread a([&] { threaded_a = train(1, path); });
        std::thread b([&] { threaded_b = train(2, path); });
        a.join();
        b.join();
        BOOST_TEST(threaded_a == alone_a);
        BOOST_TEST(threaded_b == alone_b);
    }
}

// The graph of a layer's forward pass, built here, runs backward and is freed on another thread
// (its tensors and nodes came from this thread's free lists); both threads then record again.
BOOST_AUTO_TEST_CASE(a_layer_graph_built_on_one_thread_runs_backward_and_dies_on_another) {
    for (const ExecutionPath path : {ExecutionPath::generic, ExecutionPath::fused}) {
        auto layer = rw::nn::make_recurrent<double>("gru", {.input_size = 3, .hidden_size = 4, .path = path, .seed = 3});
        const rw::Tensor<double> x = rw::Tensor<double>::ones({5, 2, 3});
        rw::sum(layer->forward(x).output).backward();
        std::vector<double> expected;
        for (const auto& parameter : layer->parameters())
            expected.insert(expected.end(), parameter.grad().value().begin(), parameter.grad().value().end());
        layer->zero_grad();

        rw::Tensor<double> loss = rw::sum(layer->forward(x).output);
        std::thread([&] {
            loss.backward();
            loss = rw::Tensor<double>();  // the last handle: the graph dies on this thread
            rw::sum(layer->forward(x).output);  // which then records a graph of its own
        }).join();
        std::vector<double> got;
        for (const auto& parameter : layer->parameters())
            got.insert(got.end(), parameter.grad().value().begin(), parameter.grad().value().end());
        BOOST_TEST(got == expected);
        rw::sum(layer->forward(x).output).backward();  // and this thread still records and runs
    }
}

BOOST_AUTO_TEST_SUITE_END()
