// Training: optimizers (by hand and against torch.optim fixtures), clipping, schedules,
// truncated BPTT, recurrent dropout, checkpoint resume, and end-to-end learning.

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

using namespace rw;
using namespace rw::nn;
using Array = xt::xarray<double>;
namespace fs = std::filesystem;
namespace tt = boost::test_tools;
using testing::max_abs_difference;
using testing::random_tensor;

namespace {

const fs::path fixtures = fs::path(REWIND_TESTS_DIR) / "fixtures" / "optim";

Tensor<double> leaf(Array value) { return Tensor<double>(std::move(value), true); }

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

ReverseBatch reverse_batch(std::size_t batch, Generator& data) {
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
float train_step(Reverser& model, Optimizer<float>& optimizer, Generator& data, std::size_t batch) {
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

Learned learn_to_reverse(Reverser& model, Optimizer<float>& optimizer, double threshold, std::size_t budget) {
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

void check_against_pytorch(const std::string& name) {
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

Stream make_stream(std::size_t steps) {
    Generator generator(5);
    Stream s;
    s.lstm = make_lstm<double>({.input_size = 3, .hidden_size = 4, .seed = 3});
    s.x = random_tensor({steps, 2, 3}, generator);
    s.targets = random_tensor({steps, 2, 4}, generator);
    return s;
}

Tensor<double> stream_loss(const Stream& s, const Tensor<double>& outputs, std::size_t begin, std::size_t end) {
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

bool rows_differ(const Array& mask) {
    for (std::size_t a = 0; a < mask.shape()[0]; ++a)
        for (std::size_t b = a + 1; b < mask.shape()[0]; ++b)
            if (xt::view(mask, a, xt::all()) == xt::view(mask, b, xt::all())) return false;
    return true;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(training)

// ---- optimizers by hand: p = 1, gradients 1 then 2 ----

BOOST_AUTO_TEST_CASE(sgd_momentum_and_weight_decay_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    SGD<double> sgd({{"p", p}}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
    p.set_grad(Tensor<double>(Array{1.0}));
    sgd.step();  // d = 1 + 0.1 * 1 = 1.1 = buffer;  p = 1 - 0.11
    BOOST_TEST(p.value()(0) == 0.89, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    sgd.step();  // d = 2 + 0.089 = 2.089;  buffer = 0.9 * 1.1 + 2.089 = 3.079;  p = 0.89 - 0.3079
    BOOST_TEST(p.value()(0) == 0.5821, tt::tolerance(1e-15));

    Tensor<double> q = leaf({1.0});
    SGD<double> nesterov({{"q", q}}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
    q.set_grad(Tensor<double>(Array{1.0}));
    nesterov.step();  // buffer = 1;  d = 1 + 0.9 * 1;  q = 1 - 0.19
    BOOST_TEST(q.value()(0) == 0.81, tt::tolerance(1e-15));
    q.set_grad(Tensor<double>(Array{2.0}));
    nesterov.step();  // buffer = 0.9 + 2 = 2.9;  d = 2 + 0.9 * 2.9 = 4.61;  q = 0.81 - 0.461
    BOOST_TEST(q.value()(0) == 0.349, tt::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(adam_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    Adam<double> adam({{"p", p}}, AdamOptions{.lr = 0.1});
    p.set_grad(Tensor<double>(Array{1.0}));
    adam.step();  // m = 0.1, v = 0.001: both bias-corrected to 1, so p = 1 - 0.1 / (1 + 1e-8)
    const double p1 = 1 - 0.1 / (1 + 1e-8);
    BOOST_TEST(p.value()(0) == p1, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    adam.step();
    const double m = 0.9 * 0.1 + 0.1 * 2, v = 0.999 * 0.001 + 0.001 * 4;
    const double p2 = p1 - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.998001)) + 1e-8);
    BOOST_TEST(p.value()(0) == p2, tt::tolerance(1e-14));
    BOOST_TEST(adam.step_count(0) == 2);
}

BOOST_AUTO_TEST_CASE(adamw_two_steps_by_hand) {
    Tensor<double> p = leaf({1.0});
    AdamWOptions options;
    options.lr = 0.1, options.weight_decay = 0.5;
    AdamW<double> adamw({{"p", p}}, options);
    p.set_grad(Tensor<double>(Array{1.0}));
    adamw.step();  // decay first: p = 1 * (1 - 0.05), then the Adam step of 0.1 / (1 + 1e-8)
    const double p1 = 0.95 - 0.1 / (1 + 1e-8);
    BOOST_TEST(p.value()(0) == p1, tt::tolerance(1e-15));
    p.set_grad(Tensor<double>(Array{2.0}));
    adamw.step();
    const double m = 0.9 * 0.1 + 0.1 * 2, v = 0.999 * 0.001 + 0.001 * 4;
    const double p2 = p1 * 0.95 - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.998001)) + 1e-8);
    BOOST_TEST(p.value()(0) == p2, tt::tolerance(1e-14));
}

// ---- optimizers against torch.optim on the same gradients ----

BOOST_AUTO_TEST_CASE(sgd_matches_pytorch) {
    for (const char* name : {"sgd_plain", "sgd_momentum", "sgd_nesterov", "sgd_weight_decay"}) check_against_pytorch(name);
}

BOOST_AUTO_TEST_CASE(adam_matches_pytorch) {
    check_against_pytorch("adam");
    check_against_pytorch("adam_weight_decay");
}

BOOST_AUTO_TEST_CASE(adamw_matches_pytorch) { check_against_pytorch("adamw"); }

// ---- non-finite gradients ----

BOOST_AUTO_TEST_CASE(optimizer_refuses_a_non_finite_gradient_naming_the_parameter) {
    Tensor<double> a = leaf({1.0, 2.0}), b = leaf({3.0});
    Adam<double> adam({{"a", a}, {"layer.b", b}}, AdamOptions{.lr = 0.1});
    a.set_grad(Tensor<double>(Array{1.0, 1.0}));
    b.set_grad(Tensor<double>(Array{std::numeric_limits<double>::quiet_NaN()}));
    BOOST_CHECK_EXCEPTION(adam.step(), NonFiniteError, [](const NonFiniteError& error) {
        return std::string(error.what()).find("'layer.b'") != std::string::npos;
    });
    // Nothing was written, not even to the parameter whose gradient was fine.
    BOOST_CHECK(a.value() == (Array{1.0, 2.0}));
    BOOST_TEST(b.value()(0) == 3.0);
    BOOST_TEST(adam.step_count(0) == 0);
}

BOOST_AUTO_TEST_CASE(skip_policy_skips_the_step_and_reports_it) {
    Tensor<double> a = leaf({1.0});
    SGD<double> sgd({{"a", a}}, {.lr = 0.1, .momentum = 0.9, .non_finite = NonFinitePolicy::skip});
    a.set_grad(Tensor<double>(Array{std::numeric_limits<double>::infinity()}));
    const StepReport report = sgd.step();
    BOOST_TEST(!report.applied);
    BOOST_TEST(report.skipped_parameter == "a");
    BOOST_TEST(sgd.skipped_steps() == 1u);
    BOOST_TEST(a.value()(0) == 1.0);
    BOOST_TEST(sgd.state().tensors.empty());  // no momentum buffer was created
    a.set_grad(Tensor<double>(Array{1.0}));
    BOOST_TEST(sgd.step().applied);
    BOOST_TEST(a.value()(0) == 0.9, tt::tolerance(1e-15));
}

// ---- clipping ----

BOOST_AUTO_TEST_CASE(clip_grad_norm_returns_the_global_norm_and_keeps_the_direction) {
    Tensor<double> a = leaf({0.0, 0.0}), b = leaf({0.0});
    a.set_grad(Tensor<double>(Array{3.0, 4.0}));
    b.set_grad(Tensor<double>(Array{12.0}));
    const double norm = clip_grad_norm(NamedTensors<double>{{"a", a}, {"b", b}}, 6.5);
    BOOST_TEST(norm == 13.0);  // sqrt(9 + 16 + 144), exactly
    const double scale = 6.5 / (13.0 + 1e-6);
    BOOST_TEST(max_abs_difference(a.grad().value(), Array{3.0 * scale, 4.0 * scale}) <= 1e-15);
    BOOST_TEST(max_abs_difference(b.grad().value(), Array{12.0 * scale}) <= 1e-15);
    // Below the limit nothing changes.
    BOOST_TEST(clip_grad_norm(std::vector<Tensor<double>>{a, b}, 100.0) == 6.5 * 13.0 / (13.0 + 1e-6), tt::tolerance(1e-15));
    BOOST_TEST(b.grad().value()(0) == 12.0 * scale);
}

BOOST_AUTO_TEST_CASE(clip_grad_value_clamps_each_element) {
    Tensor<double> a = leaf({0.0, 0.0, 0.0, 0.0});
    a.set_grad(Tensor<double>(Array{-3.0, -0.5, 0.25, 7.0}));
    clip_grad_value(std::vector<Tensor<double>>{a}, 1.0);
    BOOST_CHECK(a.grad().value() == (Array{-1.0, -0.5, 0.25, 1.0}));
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_reports_a_non_finite_norm_and_leaves_gradients_alone) {
    Tensor<double> a = leaf({0.0, 0.0}), b = leaf({0.0});
    a.set_grad(Tensor<double>(Array{3.0, 4.0}));
    for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        b.set_grad(Tensor<double>(Array{bad}));
        const NamedTensors<double> named{{"a", a}, {"b", b}};
        BOOST_TEST(!std::isfinite(clip_grad_norm(named, 1.0)));
        BOOST_CHECK(a.grad().value() == (Array{3.0, 4.0}));  // not scaled into NaN
        BOOST_CHECK_EXCEPTION(clip_grad_norm(named, 1.0, true), NonFiniteError, [](const NonFiniteError& error) {
            return std::string(error.what()).find("'b'") != std::string::npos;
        });
    }
}

// ---- schedules (PyTorch's values) ----

BOOST_AUTO_TEST_CASE(step_decay_and_cosine_annealing_follow_pytorch) {
    Tensor<double> p = leaf({0.0});
    SGD<double> sgd({{"p", p}}, {.lr = 1.0});
    StepDecay decay(sgd, 2, 0.5);
    std::vector<double> rates;
    for (int e = 0; e < 5; ++e) decay.step(), rates.push_back(sgd.lr());
    BOOST_TEST(rates == (std::vector<double>{1.0, 0.5, 0.5, 0.25, 0.25}), tt::per_element());

    SGD<double> other({{"p", p}}, {.lr = 1.0});
    CosineAnnealing cosine(other, 4, 0.0);
    const double expected[] = {0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.14644660940672627};
    for (double rate : expected) {
        cosine.step();
        BOOST_TEST(other.lr() == rate, tt::tolerance(1e-12));
    }
}

BOOST_AUTO_TEST_CASE(reduce_on_plateau_waits_patience_epochs_and_state_round_trips) {
    Tensor<double> p = leaf({0.0});
    SGD<double> sgd({{"p", p}}, {.lr = 1.0});
    ReduceOnPlateau plateau(sgd, {.factor = 0.5, .patience = 2, .cooldown = 1});
    // 1.0 improves on inf; 0.99995 is within the relative threshold 1e-4, so it is a bad epoch.
    // After the reduction at epoch 3 the cooldown swallows one bad epoch.
    const std::vector<double> metrics{1.0, 0.99995, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
    const std::vector<double> rates{1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25};
    for (std::size_t e = 0; e < metrics.size(); ++e) {
        plateau.step(metrics[e]);
        BOOST_TEST(sgd.lr() == rates[e], "epoch " << e);
    }
    BOOST_TEST(plateau.best() == 1.0);
    SGD<double> fresh_sgd({{"p", p}}, {.lr = 0.25});
    ReduceOnPlateau fresh(fresh_sgd, {.factor = 0.5, .patience = 2, .cooldown = 1});
    fresh.load_state(plateau.state(), "test");
    BOOST_CHECK(fresh.state() == plateau.state());
    StepDecay decay(fresh_sgd, 3);
    BOOST_CHECK_THROW(fresh.load_state(decay.state(), "test"), SafetensorsError);  // another kind
}

// ---- layers and losses ----

BOOST_AUTO_TEST_CASE(linear_maps_every_position_and_embedding_picks_rows) {
    Generator generator(3);
    Linear<double> linear(3, 2, generator);
    for (const double w : linear.weight().value()) BOOST_TEST(std::abs(w) <= 1 / std::sqrt(3.0));
    const Tensor<double> x = random_tensor({4, 2, 3}, generator);
    const Array y = linear.forward(x).value();
    BOOST_REQUIRE(to_shape(y.shape()) == (Shape{4, 2, 2}));
    const Array& w = linear.weight().value();
    for (std::size_t t = 0; t < 4; ++t)
        for (std::size_t o = 0; o < 2; ++o) {
            double expected = linear.bias().value()(o);
            for (std::size_t i = 0; i < 3; ++i) expected += x.value()(t, 1, i) * w(o, i);
            BOOST_TEST(y(t, 1, o) == expected, tt::tolerance(1e-14));
        }
    Embedding<double> embedding(5, 3, generator);
    const Array rows = embedding.forward(xt::xarray<std::int64_t>{{4, 0}, {4, 2}}).value();
    BOOST_CHECK(xt::view(rows, 1, 0, xt::all()) == xt::view(embedding.weight().value(), 4, xt::all()));
    BOOST_CHECK(xt::view(rows, 0, 1, xt::all()) == xt::view(embedding.weight().value(), 0, xt::all()));
}

BOOST_AUTO_TEST_CASE(sequence_cross_entropy_averages_only_the_steps_within_each_length) {
    Generator generator(9);
    const Tensor<double> logits = random_tensor({3, 2, 4}, generator);
    const xt::xarray<std::int64_t> targets{{1, 3}, {2, -1}, {-1, -1}};  // -1: padding past the lengths
    const double loss = sequence_cross_entropy(logits, targets, std::vector<std::int64_t>{2, 1}).item();
    double expected = 0;
    for (auto [t, b] : {std::pair{0, 0}, std::pair{1, 0}, std::pair{0, 1}}) {
        const auto row = xt::view(logits.value(), t, b, xt::all());
        expected -= row(targets(t, b)) - std::log(xt::sum(xt::exp(row))());
    }
    BOOST_TEST(loss == expected / 3, tt::tolerance(1e-14));
}

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

// ---- recurrent (variational) dropout ----

BOOST_AUTO_TEST_CASE(variational_dropout_masks_are_fixed_over_time_and_differ_per_sequence) {
    std::vector<std::shared_ptr<ProbeCell>> probes;
    auto factory = [&](std::size_t in, std::size_t hidden, Generator&) {
        probes.push_back(std::make_shared<ProbeCell>(in, hidden));
        return std::shared_ptr<RecurrentCell<double>>(probes.back());
    };
    auto layer = make_variational_recurrent<double>(factory, {.input_size = 16, .hidden_size = 16, .num_layers = 2, .seed = 1},
                                                    {.input = 0.5, .hidden = 0.5});
    const std::size_t steps = 5;
    layer->forward(Tensor<double>::ones({steps, 4, 16}));
    std::vector<Array> input_masks;
    for (const auto& probe : probes) {
        BOOST_REQUIRE(probe->inputs.size() == steps);
        const Array input_mask = probe->inputs[0], hidden_mask = probe->hiddens[1];  // h_0 is zeros
        for (std::size_t t = 0; t < steps; ++t) BOOST_CHECK(probe->inputs[t] == input_mask);
        for (std::size_t t = 1; t < steps; ++t) BOOST_CHECK(probe->hiddens[t] == hidden_mask);
        BOOST_TEST(rows_differ(input_mask));
        BOOST_TEST(rows_differ(hidden_mask));
        BOOST_TEST(xt::all(xt::equal(input_mask, 0.0) || xt::equal(input_mask, 2.0)));  // inverted dropout
        BOOST_CHECK(input_mask != hidden_mask);
        input_masks.push_back(input_mask);
        probe->inputs.clear(), probe->hiddens.clear();
    }
    BOOST_CHECK(input_masks[0] != input_masks[1]);  // each layer its own
    layer->forward(Tensor<double>::ones({steps, 4, 16}));
    BOOST_CHECK(probes[0]->inputs[0] != input_masks[0]);  // each forward new sequences, new masks
}

BOOST_AUTO_TEST_CASE(variational_dropout_is_off_in_eval_mode) {
    std::vector<std::shared_ptr<ProbeCell>> probes;
    auto factory = [&](std::size_t in, std::size_t hidden, Generator&) {
        probes.push_back(std::make_shared<ProbeCell>(in, hidden));
        return std::shared_ptr<RecurrentCell<double>>(probes.back());
    };
    auto layer = make_variational_recurrent<double>(factory, {.input_size = 8, .hidden_size = 8}, {.input = 0.5, .hidden = 0.5});
    layer->eval();
    layer->forward(Tensor<double>::ones({3, 2, 8}));
    for (std::size_t t = 0; t < 3; ++t) BOOST_TEST(xt::all(xt::equal(probes[0]->inputs[t], 1.0)));
    for (std::size_t t = 1; t < 3; ++t) BOOST_TEST(xt::all(xt::equal(probes[0]->hiddens[t], 1.0)));
    const auto& cell = dynamic_cast<const VariationalDropoutCell<double>&>(layer->cell(0, 0));
    BOOST_TEST(cell.input_mask().size() == 0u);
}

BOOST_AUTO_TEST_CASE(variational_dropout_lstm_passes_gradcheck_with_the_mask_fixed) {
    auto layer = make_variational_recurrent<double>("lstm", {.input_size = 3, .hidden_size = 4, .num_layers = 2, .seed = 8},
                                                    {.input = 0.3, .hidden = 0.3});
    Generator generator(4);
    std::vector<Tensor<double>> inputs{random_tensor({4, 2, 3}, generator, 1.0, true)};
    for (auto& parameter : layer->parameters()) inputs.push_back(parameter);
    const std::string masks = layer->generator().state();
    auto function = [&](const std::vector<Tensor<double>>& xs) {
        layer->generator().set_state(masks);  // the same masks at every evaluation
        auto result = layer->forward(xs[0]);
        return concat(std::vector<Tensor<double>>{reshape(result.output, {32}), reshape(result.c_n(), {16})}, 0);
    };
    const GradcheckReport report = gradcheck(function, inputs);
    BOOST_TEST(report.passed, report.to_string());
    const auto& cell = dynamic_cast<const VariationalDropoutCell<double>&>(layer->cell(1, 0));
    BOOST_TEST(xt::any(xt::equal(cell.hidden_mask(), 0.0)));  // the masks really dropped something
}

// ---- checkpoints ----

BOOST_AUTO_TEST_CASE(resume_from_a_checkpoint_is_bit_exact) {
    const ReverserConfig config{.embedding = 8, .hidden = 12, .dropout = 0.2, .variational = 0.2};
    const std::size_t steps = 10, batch = 8;
    auto make = [&](std::uint64_t seed) { return std::make_unique<Reverser>(config, seed); };
    auto adam_for = [](Reverser& model) { return std::make_unique<Adam<float>>(model.named_parameters(), AdamOptions{.lr = 0.01}); };
    auto checkpoint_of = [](Reverser& model, Optimizer<float>& optimizer, Scheduler& scheduler, Generator& data) {
        Checkpoint<float> checkpoint(model);
        checkpoint.with(optimizer).with(scheduler).with("data", data);
        checkpoint.with("dropout", model.dropout->generator()).with("lstm", model.lstm->generator());
        return checkpoint;
    };

    auto straight = make(1);
    auto straight_adam = adam_for(*straight);
    CosineAnnealing straight_schedule(*straight_adam, steps);
    Generator straight_data(7);
    for (std::size_t i = 0; i < steps; ++i) {
        train_step(*straight, *straight_adam, straight_data, batch);
        straight_schedule.step();
    }

    const TempFile temp("resume.safetensors");
    const fs::path& file = temp.path;
    {
        auto first = make(1);
        auto adam = adam_for(*first);
        CosineAnnealing schedule(*adam, steps);
        Generator data(7);
        for (std::size_t i = 0; i < steps / 2; ++i) {
            train_step(*first, *adam, data, batch);
            schedule.step();
        }
        checkpoint_of(*first, *adam, schedule, data).save(file, {{"step", "5"}});
    }
    auto resumed = make(2);  // other weights and generators: everything must come from the file
    auto adam = adam_for(*resumed);
    CosineAnnealing schedule(*adam, steps);
    Generator data(3);
    const auto user = checkpoint_of(*resumed, *adam, schedule, data).load(file);
    BOOST_TEST(user.at("step") == "5");
    for (std::size_t i = steps / 2; i < steps; ++i) {
        train_step(*resumed, *adam, data, batch);
        schedule.step();
    }

    const auto expected = straight->named_parameters(), got = resumed->named_parameters();
    BOOST_REQUIRE(expected.size() == got.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const auto& a = expected[i].second.value();
        const auto& b = got[i].second.value();
        BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, expected[i].first << " differs");
    }
    BOOST_TEST(adam->lr() == straight_adam->lr());
}

BOOST_AUTO_TEST_CASE(a_failed_checkpoint_load_changes_nothing) {
    const ReverserConfig config{.embedding = 4, .hidden = 6};
    Reverser saved(config, 1);
    Adam<float> adam(saved.named_parameters(), AdamOptions{.lr = 0.01});
    Generator data(1);
    train_step(saved, adam, data, 4);
    const TempFile temp("mismatch.safetensors");
    const fs::path& file = temp.path;
    Checkpoint<float>(saved).with(adam).save(file);

    // The model part of the file would load, the optimizer part (Adam into SGD) would not.
    Reverser target(config, 2);
    SGD<float> sgd(target.named_parameters(), {.lr = 0.1, .momentum = 0.9});
    train_step(target, sgd, data, 4);
    const TensorMap weights_before = state_dict(target);
    const OptimizerState optimizer_before = sgd.state();
    BOOST_CHECK_THROW(Checkpoint<float>(target).with(sgd).load(file), SafetensorsError);
    // A generator the file does not hold: refused as well.
    Adam<float> other(target.named_parameters(), AdamOptions{.lr = 0.5});
    Generator extra(5);
    BOOST_CHECK_THROW(Checkpoint<float>(target).with(other).with("extra", extra).load(file), SafetensorsError);

    BOOST_CHECK(state_dict(target) == weights_before);
    BOOST_CHECK(sgd.state().tensors == optimizer_before.tensors);
    BOOST_TEST(other.lr() == 0.5);
    BOOST_TEST(other.state().tensors.empty());
}

// ---- learning: an LSTM learns to reverse sequences ----

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_sgd_momentum) {
    Reverser model({}, 11);
    SGD<float> sgd(model.named_parameters(), {.lr = 0.5, .momentum = 0.9});
    const Learned learned = learn_to_reverse(model, sgd, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_adam) {
    Reverser model({}, 12);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = 0.01});
    const Learned learned = learn_to_reverse(model, adam, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_adamw) {
    Reverser model({}, 13);
    AdamWOptions options;
    options.lr = 0.01;
    AdamW<float> adamw(model.named_parameters(), options);
    const Learned learned = learn_to_reverse(model, adamw, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_SUITE_END()
