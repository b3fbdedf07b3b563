// What truncated BPTT cannot learn. The task: on a stream of random symbols, output at every
// step the symbol read `delay` steps earlier. A GRU can hold it in its state, but it only learns
// to if some gradient connects the output at step t to the input at step t - delay. Under
// TBPTT(k1, k2) (rw::nn::truncated_bptt) a loss reaches back through the window of the last k2
// steps only: the output at a chunk's last step sees inputs up to k2 - 1 steps back. So with
// k2 > delay the echo is learned (and then works at every position, with the state carried
// forward), with k2 <= delay no gradient ever links cause and effect and accuracy stays at
// chance, however long it trains: the forward pass carries the information, the truncated
// backward pass never asks for it.
//
//   build-dir/bin/tbptt_limit [--delay L] [--k2 4,12] [--k1 K1] [--epochs E] [--hidden H]
//                             [--csv FILE] [--plot FILE.png] [--json] [--seed S] [--threads N]

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/nn.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Settings {
    std::size_t delay = 6, vocab = 4, hidden = 32, batch = 16, stream = 1000, epochs = 8, k1 = 0, evaluations = 16;
    double lr = 1e-2;
    std::uint64_t seed = 1;
};

// A stream of random symbols, one-hot [N, B, V], and its targets: the symbol `delay` steps back.
// For the first `delay` steps that is a symbol from before the stream, which no model can know:
// training sees those few unanswerable targets too, the accuracy leaves them out (mask).
struct Stream {
    Tensor<float> one_hot;
    xt::xarray<std::int64_t> targets;
    xt::xarray<float> mask;
};

Stream random_stream(const Settings& s, std::size_t steps, std::size_t batch, Generator& data) {
    xt::xarray<std::int64_t> symbols = xt::xarray<std::int64_t>::from_shape({s.delay + steps, batch});  // from step -delay
    for (auto& symbol : symbols) symbol = std::min<std::int64_t>(std::int64_t(s.vocab) - 1, std::int64_t(data.uniform() * double(s.vocab)));
    xt::xarray<float> one_hot = xt::zeros<float>({steps, batch, s.vocab});
    for (std::size_t t = 0; t < steps; ++t)
        for (std::size_t b = 0; b < batch; ++b) one_hot(t, b, std::size_t(symbols(s.delay + t, b))) = 1;
    Stream stream{Tensor<float>(one_hot), xt::view(symbols, xt::range(0, steps), xt::all()), xt::ones<float>({steps, batch})};
    xt::view(stream.mask, xt::range(0, std::min(s.delay, steps)), xt::all()) = 0;
    return stream;
}

struct Model : Module<float> {
    explicit Model(const Settings& s) {
        Generator init(s.seed);
        gru = register_module("gru", make_gru<float>({.input_size = s.vocab, .hidden_size = s.hidden, .seed = s.seed}));
        head = register_module("head", std::make_shared<Linear<float>>(s.hidden, s.vocab, init));
    }
    std::shared_ptr<Recurrent<float>> gru;
    std::shared_ptr<Linear<float>> head;
};

// Accuracy over the held-out stream's answered positions, read in one forward pass.
double accuracy(Model& model, const Stream& test) {
    NoGradGuard no_grad;
    const xt::xarray<float> logits = model.head->forward(model.gru->forward(test.one_hot).output).value();
    return examples::masked_accuracy(logits, test.targets, test.mask);
}

// Trains with TBPTT(k1, k2) on fresh streams; the held-out accuracy after every evaluation interval.
std::vector<double> train(const Settings& s, std::size_t k2, const Stream& test) {
    Model model(s);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = s.lr});
    Generator data(s.seed + 1);
    const TbpttOptions tbptt{.k1 = s.k1 == 0 ? k2 : std::min(s.k1, k2), .k2 = k2};
    std::vector<double> curve{accuracy(model, test)};
    examples::Progress progress(fmt::format("k2 = {:2}, epoch", k2), s.epochs);
    for (std::size_t epoch = 1; epoch <= s.epochs; ++epoch) {
        const Stream stream = random_stream(s, s.stream, s.batch, data);
        const std::size_t chunks = (s.stream + tbptt.k1 - 1) / tbptt.k1;
        const std::size_t every = std::max<std::size_t>(1, chunks * s.epochs / s.evaluations);
        auto loss = [&](const Tensor<float>& outputs, std::size_t begin, std::size_t end) {
            const xt::xarray<std::int64_t> targets = xt::view(stream.targets, xt::range(begin, end), xt::all());
            return sequence_cross_entropy(model.head->forward(outputs), targets);
        };
        auto step = [&](const TbpttChunk<float>& chunk) {
            clip_grad_norm(model.named_parameters(), 1.0);
            adam.step();
            adam.zero_grad();
            if (((epoch - 1) * chunks + chunk.index + 1) % every == 0) curve.push_back(accuracy(model, test));
        };
        truncated_bptt<float>(*model.gru, stream.one_hot, tbptt, loss, step);
        progress.update(epoch, [&] { return fmt::format("held-out accuracy {:.3f}", curve.back()); });
    }
    curve.push_back(accuracy(model, test));
    return curve;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"truncated BPTT cannot learn a dependency longer than its window k2"};
    examples::CommonOptions common;
    examples::CurveOptions curve_options;
    Settings s;
    std::vector<std::size_t> k2_values{4, 12};
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--delay", s.delay, "the answer at step t is the symbol of step t - delay")
        ->check(CLI::Range(1, 1000))
        ->capture_default_str();
    app.add_option("--k2", k2_values, "the truncation windows to compare")->delimiter(',')->capture_default_str();
    app.add_option("--k1", s.k1, "steps between updates (0: k1 = k2, plain chunking)")->capture_default_str();
    app.add_option("--epochs", s.epochs, "fresh streams to train on")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--stream", s.stream, "steps per stream")->check(CLI::Range(16, 10000000))->capture_default_str();
    app.add_option("--vocab", s.vocab, "symbols (chance is 1/vocab)")->check(CLI::Range(2, 1000))->capture_default_str();
    app.add_option("--hidden", s.hidden, "GRU hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", s.batch, "streams side by side")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "Adam learning rate")->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out accuracy curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;
    for (auto k2 : k2_values)
        if (k2 == 0) {
            fmt::print(stderr, "--k2 values must be positive\n");
            return EXIT_FAILURE;
        }

    Generator test_data(s.seed + 1000);
    const Stream test = random_stream(s, 400, 64, test_data);
    const double chance = 1.0 / double(s.vocab);
    fmt::print("echo the symbol {} steps back ({} symbols, chance {:.3f}); GRU({}), {} streams of {} steps x {}\n"
               "a loss reaches inputs at most k2 - 1 steps back, so k2 > {} is needed\n\n",
               s.delay, s.vocab, chance, s.hidden, s.epochs, s.stream, s.batch, s.delay);
    nlohmann::json summary{{"delay", s.delay}, {"chance", chance}, {"runs", nlohmann::json::array()}};
    std::vector<std::vector<double>> curves;
    for (auto k2 : k2_values) {
        curves.push_back(train(s, k2, test));
        const double final_accuracy = curves.back().back();
        fmt::print("k2 = {:3} ({} delay): held-out accuracy {:.3f}\n\n", k2, k2 > s.delay ? ">" : "<=", final_accuracy);
        summary["runs"].push_back({{"k2", k2}, {"k1", s.k1 == 0 ? k2 : std::min(s.k1, k2)}, {"accuracy", final_accuracy}});
    }

    examples::Curve curve{{"progress"}, {}};
    for (auto k2 : k2_values) curve.columns.push_back(fmt::format("k2={}", k2));
    curve.columns.push_back("chance");
    std::size_t points = 0;
    for (const auto& c : curves) points = std::max(points, c.size());
    for (std::size_t i = 0; i < points; ++i) {
        std::vector<double> row{double(i) / double(points - 1)};
        for (const auto& c : curves) row.push_back(i < c.size() ? c[i] : NAN);
        row.push_back(chance);
        curve.add(row);
    }
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("echo at delay {}: held-out accuracy under TBPTT", s.delay),
                          .x_label = "fraction of training", .y_label = "accuracy"});
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
