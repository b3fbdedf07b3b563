#pragma once
// What the training tests share (test_optim, test_tbptt, test_layers, test_checkpoint): the
// reversal task and its model, optimizer fixtures, a TBPTT stream, a probe cell, temp files.

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <set>
#include <unistd.h>
#include <xtensor/xsort.hpp>
#include <xtensor/xview.hpp>
#include <rewind/autograd.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/io/safetensors.hpp>
#include <rewind/nn/train/schedule.hpp>
#include <rewind/nn/io/state_dict.hpp>
#include <rewind/nn/train/tbptt.hpp>
#include "test_helpers.hpp"

namespace rw::training_checks {

using namespace rw::nn;
using Array = xt::xarray<double>;
namespace fs = std::filesystem;
using testing::max_abs_difference;
using testing::random_tensor;

inline const fs::path fixtures = fs::path(REWIND_TESTS_DIR) / "fixtures" / "optim";

inline Tensor<double> leaf(Array value) { return Tensor<double>(std::move(value), true); }

// A file in the temp directory, removed however the test ends.
struct TempFile {
    explicit TempFile(const std::string& name)
        : path(fs::temp_directory_path() / fmt::format("rewind_training_{}_{}", ::getpid(), name)) {}
    ~TempFile() {
        std::error_code ignored;
        fs::remove(path, ignored);
    }
    fs::path path;
};

// ---- the reverse task: read L symbols, then emit them backwards during L blank steps ----

constexpr std::size_t kLength = 5, kVocab = 6;

struct ReverseBatch {
    xt::xarray<std::int64_t> inputs, targets;  // [2L, B]
    xt::xarray<float> mask;                     // [2L, B]: 1 on the answer steps
};

inline ReverseBatch reverse_batch(std::size_t batch, Generator& data) {
    ReverseBatch out{xt::xarray<std::int64_t>::from_shape({2 * kLength, batch}),
                     xt::xarray<std::int64_t>::from_shape({2 * kLength, batch}), xt::zeros<float>({2 * kLength, batch})};
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t t = 0; t < kLength; ++t) {
            const auto symbol = std::int64_t(std::min(kVocab - 1, std::size_t(data.uniform() * kVocab)));
            out.inputs(t, b) = symbol;
            out.inputs(kLength + t, b) = kVocab;  // the blank token
            out.targets(t, b) = -1;               // padding, masked out
            out.targets(2 * kLength - 1 - t, b) = symbol;
            out.mask(kLength + t, b) = 1;
        }
    return out;
}

struct ReverserConfig {
    std::size_t embedding = 16, hidden = 48;
    double dropout = 0.0;      // on the embeddings
    double variational = 0.0;  // on the LSTM's input and recurrent h
};

// Embedding -> Dropout -> LSTM -> Linear.
struct Reverser : Module<float> {
    Reverser(const ReverserConfig& config, std::uint64_t seed) {
        Generator generator(seed);
        embedding = register_module("embedding", std::make_shared<Embedding<float>>(kVocab + 1, config.embedding, generator));
        dropout = register_module("dropout", std::make_shared<Dropout<float>>(config.dropout, seed + 1));
        const RecurrentOptions options{.input_size = config.embedding, .hidden_size = config.hidden, .seed = seed + 2};
        lstm = register_module("lstm", config.variational > 0
                                           ? make_variational_recurrent<float>("lstm", options, {config.variational, config.variational})
                                           : make_lstm<float>(options));
        head = register_module("head", std::make_shared<Linear<float>>(config.hidden, kVocab, generator));
    }
    Tensor<float> loss(const ReverseBatch& batch) {
        const Tensor<float> x = dropout->forward(embedding->forward(batch.inputs));
        return sequence_cross_entropy(head->forward(lstm->forward(x).output), batch.targets,
                                      std::optional<xt::xarray<float>>(batch.mask));
    }
    double accuracy(const ReverseBatch& batch) {
        NoGradGuard no_grad;
        const auto logits = head->forward(lstm->forward(embedding->forward(batch.inputs)).output).value();
        double right = 0, total = 0;
        for (std::size_t t = kLength; t < 2 * kLength; ++t)
            for (std::size_t b = 0; b < batch.inputs.shape()[1]; ++b) {
                auto row = xt::view(logits, t, b, xt::all());
                right += std::int64_t(xt::argmax(row)()) == batch.targets(t, b);
                ++total;
            }
        return right / total;
    }
    std::shared_ptr<Embedding<float>> embedding;
    std::shared_ptr<Dropout<float>> dropout;
    std::shared_ptr<Recurrent<float>> lstm;
    std::shared_ptr<Linear<float>> head;
};

// One training step: backward, clip, update.
inline float train_step(Reverser& model, Optimizer<float>& optimizer, Generator& data, std::size_t batch) {
    optimizer.zero_grad();
    const Tensor<float> loss = model.loss(reverse_batch(batch, data));
    loss.backward();
    clip_grad_norm(model.named_parameters(), 5.0);
    optimizer.step();
    return loss.item();
}

// Steps until the mean loss of the last 20 steps is below the threshold (or the budget is spent).
struct Learned {
    std::size_t steps = 0;
    double loss = 0, accuracy = 0;
};

inline Learned learn_to_reverse(Reverser& model, Optimizer<float>& optimizer, double threshold, std::size_t budget) {
    Generator data(99);
    std::vector<float> recent;
    Learned result;
    for (result.steps = 1; result.steps <= budget; ++result.steps) {
        recent.push_back(train_step(model, optimizer, data, 32));
        if (recent.size() > 20) recent.erase(recent.begin());
        result.loss = std::accumulate(recent.begin(), recent.end(), 0.0) / double(recent.size());
        if (recent.size() == 20 && result.loss < threshold) break;
    }
    Generator held_out(12345);
    model.eval();
    result.accuracy = model.accuracy(reverse_batch(256, held_out));
    BOOST_TEST_MESSAGE(fmt::format("  {}: {} steps, mean loss {:.4f}, held-out accuracy {:.3f}", optimizer.kind(),
                                   result.steps, result.loss, result.accuracy));
    return result;
}

// ---- optimizer fixtures written by make_optim_fixtures.py ----

inline void check_against_pytorch(const std::string& name) {
    std::map<std::string, std::string> meta;
    const TensorMap file = load_safetensors(fixtures / (name + ".safetensors"), &meta);
    auto tensor = [&](const std::string& key) { return std::get<Array>(file.at(key)); };
    auto number = [&](const std::string& key) { return *parse_exact(meta.at(key)); };
    NamedTensors<double> parameters{{"w", leaf(tensor("param.w"))}, {"b", leaf(tensor("param.b"))}};
    std::unique_ptr<Optimizer<double>> optimizer;
    if (meta.at("optimizer") == "sgd") {
        optimizer = std::make_unique<SGD<double>>(
            parameters, SGDOptions{.lr = number("lr"), .momentum = number("momentum"), .dampening = number("dampening"),
                                   .nesterov = number("nesterov") != 0, .weight_decay = number("weight_decay")});
    } else {
        AdamOptions options;
        options.lr = number("lr"), options.beta1 = number("beta1"), options.beta2 = number("beta2");
        options.eps = number("eps"), options.weight_decay = number("weight_decay");
        if (meta.at("optimizer") == "adam") optimizer = std::make_unique<Adam<double>>(parameters, options);
        else optimizer = std::make_unique<Adam<double>>(parameters, options, true);
    }
    BOOST_TEST(optimizer->kind() == meta.at("optimizer"));
    double worst = 0;
    for (int k = 0; k < std::stoi(meta.at("steps")); ++k) {
        for (auto& [key, parameter] : parameters) parameter.set_grad(Tensor<double>(tensor(fmt::format("grad.{}.{}", k, key))));
        BOOST_TEST(optimizer->step().applied);
        for (auto& [key, parameter] : parameters) {
            const double difference = max_abs_difference(parameter.value(), tensor(fmt::format("expected.{}.{}", k, key)));
            BOOST_TEST(difference <= 1e-12, name << " step " << k << " parameter " << key);
            worst = std::max(worst, difference);
        }
    }
    BOOST_TEST_MESSAGE(fmt::format("  {}: largest difference from torch.optim {:.1e}", name, worst));
}

// A small LSTM and stream for the TBPTT cases (generic path where an observer is set).
struct Stream {
    std::shared_ptr<Recurrent<double>> lstm;
    Tensor<double> x, targets;
};

inline Stream make_stream(std::size_t steps) {
    Generator generator(5);
    Stream s;
    s.lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .seed = 3});
    s.x = random_tensor({steps, 2, 3}, generator);
    s.targets = random_tensor({steps, 2, 4}, generator);
    return s;
}

inline Tensor<double> stream_loss(const Stream& s, const Tensor<double>& outputs, std::size_t begin, std::size_t end) {
    return mse_loss(outputs, slice(s.targets, 0, begin, end));
}

// A parameter-free cell that records what it is given and returns h' = 1.
struct ProbeCell : RecurrentCell<double> {
    using RecurrentCell::RecurrentCell;
    State<double> step(const Tensor<double>& x_t, const State<double>& state) const override {
        inputs.push_back(x_t.value());
        hiddens.push_back(state[0].value());
        return {Tensor<double>::ones(state[0].shape())};
    }
    mutable std::vector<Array> inputs, hiddens;
};

inline bool rows_differ(const Array& mask) {
    for (std::size_t a = 0; a < mask.shape()[0]; ++a)
        for (std::size_t b = a + 1; b < mask.shape()[0]; ++b)
            if (xt::view(mask, a, xt::all()) == xt::view(mask, b, xt::all())) return false;
    return true;
}

}  // namespace rw::training_checks
