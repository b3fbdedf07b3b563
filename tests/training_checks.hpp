#pragma once
// What the training tests share (test_optim, test_tbptt, test_layers, test_checkpoint): the
// reversal task and its model (examples/reverse_task.hpp's), optimizer fixtures, a TBPTT stream,
// a probe cell, temp files.

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
#include "reverse_task.hpp"  // examples/: the reverse task's model, public API only
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

// ---- the reverse task and its model: examples/reverse_task.hpp, as the examples use them ----

namespace reverse = examples::reverse;

// The task with `batch` sequences (5 symbols of 6, the examples' default).
inline reverse::Batch reverse_batch(std::size_t batch, Generator& data) {
    return reverse::random_batch(reverse::Task{.batch = batch}, data);
}

inline std::unique_ptr<reverse::Model> make_reverser(const reverse::ModelOptions& options, std::uint64_t seed) {
    return std::make_unique<reverse::Model>(reverse::Task{}, options, seed);
}

// One training step: backward, clip, update.
inline float train_step(reverse::Model& model, Optimizer<float>& optimizer, Generator& data, std::size_t batch) {
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

inline Learned learn_to_reverse(reverse::Model& model, Optimizer<float>& optimizer, double threshold, std::size_t budget) {
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
    const reverse::Batch test = reverse_batch(256, held_out);
    NoGradGuard no_grad;
    result.accuracy = reverse::accuracy(model.logits(test), test);
    BOOST_TEST_MESSAGE(fmt::format("  {}: {} steps, mean loss {:.4f}, held-out accuracy {:.3f}", optimizer.kind(),
                                   result.steps, result.loss, result.accuracy));
    return result;
}

// ---- optimizer fixtures written by make_optim_fixtures.py ----

// The optimizer a fixture names, with its hyperparameters (torch's names, booleans as 0/1).
inline std::unique_ptr<Optimizer<double>> optimizer_from_fixture(const NamedTensors<double>& parameters,
                                                                 const std::map<std::string, std::string>& meta) {
    auto number = [&](const std::string& key) { return *parse_exact(meta.at(key)); };
    const std::string& kind = meta.at("optimizer");
    const double lr = number("lr"), wd = number("weight_decay");
    if (kind == "sgd")
        return std::make_unique<SGD<double>>(
            parameters, SGDOptions{.lr = lr, .momentum = number("momentum"), .dampening = number("dampening"),
                                   .nesterov = number("nesterov") != 0, .weight_decay = wd});
    if (kind == "adam" || kind == "adamw") {
        AdamOptions options;
        options.lr = lr, options.beta1 = number("beta1"), options.beta2 = number("beta2");
        options.eps = number("eps"), options.weight_decay = wd;
        return std::make_unique<Adam<double>>(parameters, options, kind == "adamw");
    }
    if (kind == "rmsprop")
        return std::make_unique<RMSprop<double>>(
            parameters, RMSpropOptions{.lr = lr, .alpha = number("alpha"), .eps = number("eps"), .weight_decay = wd,
                                       .momentum = number("momentum"), .centered = number("centered") != 0});
    if (kind == "adagrad")
        return std::make_unique<Adagrad<double>>(
            parameters, AdagradOptions{.lr = lr, .lr_decay = number("lr_decay"), .weight_decay = wd,
                                       .initial_accumulator_value = number("initial_accumulator_value"),
                                       .eps = number("eps")});
    if (kind == "adadelta")
        return std::make_unique<Adadelta<double>>(
            parameters, AdadeltaOptions{.lr = lr, .rho = number("rho"), .eps = number("eps"), .weight_decay = wd});
    if (kind == "adamax")
        return std::make_unique<Adamax<double>>(parameters, AdamaxOptions{.lr = lr, .beta1 = number("beta1"),
                                                                          .beta2 = number("beta2"), .eps = number("eps"),
                                                                          .weight_decay = wd});
    if (kind == "nadam")
        return std::make_unique<NAdam<double>>(
            parameters, NAdamOptions{.lr = lr, .beta1 = number("beta1"), .beta2 = number("beta2"), .eps = number("eps"),
                                     .weight_decay = wd, .momentum_decay = number("momentum_decay")});
    if (kind == "radam")
        return std::make_unique<RAdam<double>>(parameters, RAdamOptions{.lr = lr, .beta1 = number("beta1"),
                                                                        .beta2 = number("beta2"), .eps = number("eps"),
                                                                        .weight_decay = wd});
    throw std::invalid_argument("fixture names an unknown optimizer '" + kind + "'");
}

// Runs the fixture's steps; every parameter after every step within 1e-12 of torch.optim's.
// Halfway, the state goes through state() and load_state() into a fresh optimizer, which
// continues: the checkpoint round trip is checked against torch too.
inline void check_against_pytorch(const std::string& name) {
    std::map<std::string, std::string> meta;
    const TensorMap file = load_safetensors(fixtures / (name + ".safetensors"), &meta);
    auto tensor = [&](const std::string& key) { return std::get<Array>(file.at(key)); };
    NamedTensors<double> parameters{{"w", leaf(tensor("param.w"))}, {"layer.b", leaf(tensor("param.b"))}};
    auto fixture_key = [](const std::string& parameter) { return parameter == "layer.b" ? std::string("b") : parameter; };
    std::unique_ptr<Optimizer<double>> optimizer = optimizer_from_fixture(parameters, meta);
    BOOST_TEST(optimizer->kind() == meta.at("optimizer"));
    double worst = 0;
    const int steps = std::stoi(meta.at("steps"));
    for (int k = 0; k < steps; ++k) {
        if (k == steps / 2) {
            const OptimizerState saved = optimizer->state();
            auto resumed = optimizer_from_fixture(parameters, meta);
            resumed->load_state(saved, name);
            BOOST_CHECK(resumed->state().tensors == saved.tensors);
            BOOST_CHECK(resumed->state().scalars == saved.scalars);
            optimizer = std::move(resumed);
        }
        for (auto& [key, parameter] : parameters)
            parameter.set_grad(Tensor<double>(tensor(fmt::format("grad.{}.{}", k, fixture_key(key)))));
        BOOST_TEST(optimizer->step().applied);
        for (auto& [key, parameter] : parameters) {
            const double difference =
                max_abs_difference(parameter.value(), tensor(fmt::format("expected.{}.{}", k, fixture_key(key))));
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
