// The four input/output shapes of a recurrent model, each on a toy task trained briefly, and
// the three ways to start the hidden state:
//
//   one-to-one    a single step: the recurrent layer is just a feed-forward layer (zero state)
//   one-to-many   the caller computes h0 from a condition and the layer unrolls from it (given)
//   many-to-one   classify variable-length sequences from h_n (learned initial state)
//   many-to-many  per-step outputs y_t = W_hy h_t, cross-entropy over time with a mask (zeros)
//
//   build-dir/bin/sequence_shapes [--steps N] [--hidden H] [--batch B] [--seed S] [--threads N]

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <map>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Settings {
    std::size_t steps = 300, hidden = 32, batch = 32;
    double lr = 0.01;
    std::uint64_t seed = 1;
};

// A container module, so that one optimizer sees the parameters of all the parts.
struct Net : Module<float> {
    template <class M>
    std::shared_ptr<M> add(std::string name, std::shared_ptr<M> module) {
        return register_module(std::move(name), std::move(module));
    }
};

// Adam on fresh batches; returns the loss on one fixed held-out batch before and after.
template <class MakeBatch, class Loss>
std::pair<double, double> fit(Net& net, MakeBatch make_batch, Loss loss, const Settings& s) {
    const auto held_out = make_batch();
    auto evaluate = [&] {
        NoGradGuard no_grad;
        return double(loss(held_out).item());
    };
    const double before = evaluate();
    Adam<float> adam(net.named_parameters(), AdamOptions{.lr = s.lr});
    for (std::size_t step = 0; step < s.steps; ++step) {
        adam.zero_grad();
        loss(make_batch()).backward();
        clip_grad_norm(net.named_parameters(), 1.0);
        adam.step();
    }
    return {before, evaluate()};
}

// Arg-max accuracy of logits [N, C] over the rows whose label is not negative.
double accuracy(const Tensor<float>& logits, const std::vector<std::int64_t>& labels) {
    double right = 0, total = 0;
    for (std::size_t n = 0; n < labels.size(); ++n)
        if (labels[n] >= 0) {
            right += examples::arg_max(xt::view(logits.value(), n, xt::all())) == labels[n];
            ++total;
        }
    return right / total;
}

// Each shape's outcome against its own baseline (lower is better for "mse", higher for accuracy).
struct Outcome {
    std::string metric;
    double value, baseline;
};

Outcome report(const char* shape, const char* what, std::pair<double, double> loss, const Outcome& outcome) {
    fmt::print("{:<13} {:<52} loss {:.4f} -> {:.4f}   {} {:.3f} (baseline {:.3f})\n", shape, what, loss.first,
               loss.second, outcome.metric, outcome.value, outcome.baseline);
    return outcome;
}

// The accuracy of always answering the most frequent label.
double majority_share(const std::vector<std::int64_t>& labels) {
    std::map<std::int64_t, double> counts;
    double total = 0;
    for (auto label : labels)
        if (label >= 0) ++counts[label], ++total;
    double most = 0;
    for (const auto& [label, count] : counts) most = std::max(most, count);
    return most / total;
}

// ---- one-to-one: is a point inside the unit circle? ----
// With T = 1 and h0 = 0 a GRU is one hidden layer: recurrence adds nothing, which is the point.
Outcome one_to_one(const Settings& s) {
    Net net;
    Generator init(s.seed), data(s.seed + 1);
    auto gru = net.add("gru", make_gru<float>({.input_size = 2, .hidden_size = s.hidden, .seed = s.seed}));
    auto head = net.add("head", std::make_shared<Linear<float>>(s.hidden, 2, init));
    struct Points { Tensor<float> x; std::vector<std::int64_t> label; };
    auto make_batch = [&] {
        Points p{Tensor<float>(examples::uniform_array<float>({1, s.batch, 2}, data, 1.5)), {}};
        for (std::size_t b = 0; b < s.batch; ++b)
            p.label.push_back(std::hypot(p.x.value()(0, b, 0), p.x.value()(0, b, 1)) < 1.0);
        return p;
    };
    auto logits = [&](const Points& p) { return head->forward(reshape(gru->forward(p.x).h_n(), {s.batch, s.hidden})); };
    auto loss = [&](const Points& p) { return cross_entropy(logits(p), p.label); };
    const auto result = fit(net, make_batch, loss, s);
    const Points test = make_batch();  // fresh points, never trained on
    NoGradGuard no_grad;
    return report("one-to-one", "GRU, T = 1, zero h0: inside the unit circle?", result,
                  {"accuracy", accuracy(logits(test), test.label), majority_share(test.label)});
}

// ---- one-to-many: a sine wave of the requested frequency and phase ----
// No input at all: the caller encodes the condition into h0 and the layer unrolls from it.
// The gradient flows back through the given h0 into the encoder.
Outcome one_to_many(const Settings& s) {
    constexpr std::size_t steps = 16;
    Net net;
    Generator init(s.seed), data(s.seed + 2);
    auto encoder = net.add("encoder", std::make_shared<Linear<float>>(3, s.hidden, init));
    auto gru = net.add("gru", make_gru<float>({.input_size = 1, .hidden_size = s.hidden, .seed = s.seed}));
    auto head = net.add("head", std::make_shared<Linear<float>>(s.hidden, 1, init));
    struct Waves { Tensor<float> condition, target; };
    auto make_batch = [&] {
        xt::xarray<float> condition = xt::zeros<float>({s.batch, std::size_t(3)}), target = xt::zeros<float>({steps, s.batch, std::size_t(1)});
        for (std::size_t b = 0; b < s.batch; ++b) {
            const double omega = data.uniform(0.2, 0.6), phase = data.uniform(0, 2 * std::numbers::pi);
            condition(b, 0) = float(omega), condition(b, 1) = float(std::sin(phase)), condition(b, 2) = float(std::cos(phase));
            for (std::size_t t = 0; t < steps; ++t) target(t, b, 0) = float(std::sin(omega * double(t) + phase));
        }
        return Waves{Tensor<float>(condition), Tensor<float>(target)};
    };
    auto loss = [&](const Waves& w) {
        const Tensor<float> h0 = reshape(tanh(encoder->forward(w.condition)), {1, s.batch, s.hidden});
        const Tensor<float> silence = Tensor<float>::zeros({steps, s.batch, 1});
        return mse_loss(head->forward(gru->forward(silence, {h0}).output), w.target);
    };
    const auto result = fit(net, make_batch, loss, s);
    const Waves test = make_batch();
    NoGradGuard no_grad;
    const double zero_mse = double(xt::mean(test.target.value() * test.target.value())());  // always predicting 0
    return report("one-to-many", "GRU, given h0 = tanh(encoder(condition)): sine wave", result,
                  {"mse", loss(test).item(), zero_mse});
}

// ---- many-to-one: is the sum of a variable-length sequence positive? ----
// Padding past each sequence's end is loud noise: h_n is taken at each sequence's own last
// step, so the noise cannot matter. The initial state is a trained parameter.
Outcome many_to_one(const Settings& s) {
    constexpr std::size_t max_steps = 16;
    Net net;
    Generator init(s.seed), data(s.seed + 3);
    auto lstm = net.add("lstm", make_lstm<float>({.input_size = 1, .hidden_size = s.hidden,
                                                  .initial_state = InitialState::learned, .seed = s.seed}));
    auto head = net.add("head", std::make_shared<Linear<float>>(s.hidden, 2, init));
    struct Sequences { Tensor<float> x; std::vector<std::int64_t> lengths, label; };
    auto make_batch = [&] {
        xt::xarray<float> x = examples::uniform_array<float>({max_steps, s.batch, 1}, data, 5.0);  // the noise
        Sequences seqs{{}, {}, {}};
        for (std::size_t b = 0; b < s.batch; ++b) {
            const auto length = std::size_t(data.uniform(3, max_steps + 1));
            double sum = 0;
            for (std::size_t t = 0; t < length; ++t) sum += x(t, b, 0) = float(data.uniform(-1, 1));
            seqs.lengths.push_back(std::int64_t(length));
            seqs.label.push_back(sum > 0);
        }
        seqs.x = Tensor<float>(x);
        return seqs;
    };
    auto logits = [&](const Sequences& q) {
        return head->forward(reshape(lstm->forward(q.x, {}, q.lengths).h_n(), {s.batch, s.hidden}));
    };
    auto loss = [&](const Sequences& q) { return cross_entropy(logits(q), q.label); };
    const xt::xarray<float> h0_before = lstm->parameter("initial_h_l0").value();
    const auto result = fit(net, make_batch, loss, s);
    const double moved = examples::max_abs_difference(h0_before, lstm->parameter("initial_h_l0").value());
    const Sequences test = make_batch();
    NoGradGuard no_grad;
    const Outcome outcome = report("many-to-one", "LSTM, learned h0/c0, lengths 3..16: is the sum > 0?", result,
                                   {"accuracy", accuracy(logits(test), test.label), majority_share(test.label)});
    fmt::print("{:<13} (initial_h_l0 moved by up to {:.3f})\n", "", moved);
    return outcome;
}

// ---- many-to-many: at every step, the symbol seen `delay` steps ago ----
// y_t = W_hy h_t (a Linear without bias on every step at once); the mask removes the padding
// and the first `delay` steps, which have no answer.
Outcome many_to_many(const Settings& s, std::size_t delay) {
    constexpr std::size_t max_steps = 12, vocab = 5;
    Net net;
    Generator init(s.seed), data(s.seed + 4);
    auto rnn = net.add("rnn", make_rnn<float>({.input_size = vocab, .hidden_size = s.hidden, .seed = s.seed}));
    auto w_hy = net.add("w_hy", std::make_shared<Linear<float>>(s.hidden, vocab, init, /*bias=*/false));
    struct Symbols { Tensor<float> one_hot; xt::xarray<std::int64_t> targets; xt::xarray<float> mask; std::vector<std::int64_t> lengths; };
    auto make_batch = [&] {
        xt::xarray<float> one_hot = xt::zeros<float>({max_steps, s.batch, vocab});
        Symbols q{{}, xt::xarray<std::int64_t>::from_shape({max_steps, s.batch}), {}, {}};
        q.targets.fill(-1);  // "no answer here"; the mask must exclude every such position
        std::vector<std::int64_t> symbols(max_steps);
        for (std::size_t b = 0; b < s.batch; ++b) {
            const auto length = std::size_t(data.uniform(double(delay + 1), max_steps + 1));
            for (std::size_t t = 0; t < length; ++t) {
                symbols[t] = std::int64_t(data.uniform(0, vocab));
                one_hot(t, b, std::size_t(symbols[t])) = 1;
                if (t >= delay) q.targets(t, b) = symbols[t - delay];
            }
            q.lengths.push_back(std::int64_t(length));
        }
        q.mask = length_mask<float>(max_steps, q.lengths);
        xt::view(q.mask, xt::range(0, delay), xt::all()) = 0;
        q.one_hot = Tensor<float>(one_hot);
        return q;
    };
    auto logits = [&](const Symbols& q) { return w_hy->forward(rnn->forward(q.one_hot, {}, q.lengths).output); };
    auto loss = [&](const Symbols& q) {
        return sequence_cross_entropy(logits(q), q.targets, std::optional<xt::xarray<float>>(q.mask));
    };
    const auto result = fit(net, make_batch, loss, s);
    const Symbols test = make_batch();
    NoGradGuard no_grad;
    const std::vector<std::int64_t> labels(test.targets.begin(), test.targets.end());  // -1 where masked
    return report("many-to-many", fmt::format("tanh RNN, zero h0, y_t = W_hy h_t: echo x_(t-{})", delay).c_str(), result,
                  {"accuracy", accuracy(reshape(logits(test), {max_steps * s.batch, vocab}), labels), majority_share(labels)});
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"one-to-one, one-to-many, many-to-one and many-to-many recurrent models"};
    examples::CommonOptions common;
    Settings settings;
    std::size_t delay = 2;
    bool json = false;
    examples::add_common_options(app, common);
    app.add_option("--steps", settings.steps, "training steps per model")->capture_default_str();
    app.add_option("--hidden", settings.hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", settings.batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", settings.lr, "Adam learning rate")->capture_default_str();
    app.add_option("--delay", delay, "many-to-many: echo the symbol this many steps back")->check(CLI::Range(1, 8))->capture_default_str();
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    settings.seed = common.seed;

    fmt::print("{} training steps each, held-out loss before -> after:\n\n", settings.steps);
    nlohmann::json summary;
    const std::pair<const char*, Outcome> outcomes[] = {{"one_to_one", one_to_one(settings)},
                                                        {"one_to_many", one_to_many(settings)},
                                                        {"many_to_one", many_to_one(settings)},
                                                        {"many_to_many", many_to_many(settings, delay)}};
    for (const auto& [shape, o] : outcomes) summary[shape] = {{"metric", o.metric}, {"value", o.value}, {"baseline", o.baseline}};
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
