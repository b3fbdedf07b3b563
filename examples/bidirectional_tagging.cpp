// A tagging task that needs the future: tag every position of a sequence with the token that
// comes `ahead` positions later (the last `ahead` positions, which have none, are not tagged).
// A unidirectional layer at step t has read only x_1..x_t, so its tags are guesses: accuracy at
// chance, whatever it trains on. A bidirectional layer's reverse direction has read x_t..x_T and
// tags correctly. Same data, same cell (GRU), same training; variable lengths with padding.
//
//   build-dir/bin/bidirectional_tagging [--ahead K] [--steps N] [--hidden H] [--vocab V]
//                                       [--json] [--seed S] [--threads N]

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/nn.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

struct Settings {
    std::size_t ahead = 2, vocab = 4, hidden = 24, batch = 32, max_length = 12, steps = 300;
    double lr = 1e-2;
    std::uint64_t seed = 1;
};

struct Batch {
    Tensor<float> one_hot;                 // [T, B, V], zero past each sequence's end
    xt::xarray<std::int64_t> tags;         // [T, B]
    xt::xarray<float> mask;                // 1 where a position has a tag
    std::vector<std::int64_t> lengths;
};

Batch random_batch(const Settings& s, std::size_t batch, Generator& data) {
    const std::size_t T = s.max_length;
    xt::xarray<float> one_hot = xt::zeros<float>({T, batch, s.vocab});
    Batch result{{}, xt::zeros<std::int64_t>({T, batch}), xt::zeros<float>({T, batch}), {}};
    std::vector<std::int64_t> tokens(T);
    for (std::size_t b = 0; b < batch; ++b) {
        const auto length = std::size_t(data.uniform(double(s.ahead + 2), double(T + 1)));
        for (std::size_t t = 0; t < length; ++t) {
            tokens[t] = std::min<std::int64_t>(std::int64_t(s.vocab) - 1, std::int64_t(data.uniform() * double(s.vocab)));
            one_hot(t, b, std::size_t(tokens[t])) = 1;
        }
        for (std::size_t t = 0; t + s.ahead < length; ++t) {
            result.tags(t, b) = tokens[t + s.ahead];
            result.mask(t, b) = 1;
        }
        result.lengths.push_back(std::int64_t(length));
    }
    result.one_hot = Tensor<float>(one_hot);
    return result;
}

struct Tagger : Module<float> {
    Tagger(const Settings& s, bool bidirectional) {
        Generator init(s.seed);
        gru = register_module("gru", make_gru<float>({.input_size = s.vocab, .hidden_size = s.hidden,
                                                      .bidirectional = bidirectional, .seed = s.seed}));
        head = register_module("head", std::make_shared<Linear<float>>((bidirectional ? 2 : 1) * s.hidden, s.vocab, init));
    }
    Tensor<float> logits(const Batch& b) const { return head->forward(gru->forward(b.one_hot, {}, b.lengths).output); }
    std::shared_ptr<Recurrent<float>> gru;
    std::shared_ptr<Linear<float>> head;
};

double tag_accuracy(const Tagger& tagger, const Batch& test) {
    NoGradGuard no_grad;
    const xt::xarray<float> logits = tagger.logits(test).value();
    return examples::masked_accuracy(logits, test.tags, test.mask);
}

// Trains one tagger; its loss per step goes to `losses`.
double train(const Settings& s, bool bidirectional, const Batch& test, std::vector<double>& losses) {
    Tagger tagger(s, bidirectional);
    Adam<float> adam(tagger.named_parameters(), AdamOptions{.lr = s.lr});
    Generator data(s.seed + 1);
    examples::Progress progress(bidirectional ? "bidirectional " : "unidirectional", s.steps);
    for (std::size_t step = 1; step <= s.steps; ++step) {
        const Batch batch = random_batch(s, s.batch, data);
        adam.zero_grad();
        const Tensor<float> loss = sequence_cross_entropy(tagger.logits(batch), batch.tags, std::optional(batch.mask));
        loss.backward();
        clip_grad_norm(tagger.named_parameters(), 1.0);
        adam.step();
        losses.push_back(loss.item());
        progress.update(step, [&] { return fmt::format("loss {:.4f}", loss.item()); });
    }
    return tag_accuracy(tagger, test);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"tagging that needs the future: unidirectional vs bidirectional GRU"};
    examples::CommonOptions common;
    Settings s;
    bool json = false;
    examples::CurveOptions curve_options;
    examples::add_common_options(app, common);
    app.add_option("--ahead", s.ahead, "tag each position with the token this many positions later")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    app.add_option("--steps", s.steps, "training steps per model")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", s.hidden, "GRU hidden size per direction")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--vocab", s.vocab, "tokens (chance is 1/vocab)")->check(CLI::Range(2, 1000))->capture_default_str();
    app.add_option("--max-length", s.max_length, "longest sequence")->check(CLI::Range(4, 100000))->capture_default_str();
    app.add_option("--batch", s.batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "Adam learning rate")->capture_default_str();
    examples::add_curve_options(app, curve_options, "both training-loss curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;
    if (s.max_length < s.ahead + 2) {
        fmt::print(stderr, "--max-length must be at least --ahead + 2\n");
        return EXIT_FAILURE;
    }

    Generator test_data(s.seed + 1000);
    const Batch test = random_batch(s, 512, test_data);
    const double chance = 1.0 / double(s.vocab);
    fmt::print("tag each position with the token {} later; {} tokens (chance {:.3f}), lengths {}..{}, GRU({})\n\n", s.ahead,
               s.vocab, chance, s.ahead + 2, s.max_length, s.hidden);
    std::vector<double> uni_losses, bi_losses;
    const double uni = train(s, false, test, uni_losses);
    const double bi = train(s, true, test, bi_losses);
    examples::Curve curve{{"step", "unidirectional", "bidirectional"}, {}};
    for (std::size_t i = 0; i < s.steps; ++i) curve.add({double(i + 1), uni_losses[i], bi_losses[i]});
    examples::save_curve(curve_options, curve,
                         {.title = fmt::format("tags from {} positions ahead: training loss", s.ahead),
                          .x_label = "training step", .y_label = "cross-entropy", .log_y = true});
    fmt::print("\nheld-out tag accuracy: unidirectional {:.3f}, bidirectional {:.3f} (chance {:.3f})\n", uni, bi, chance);
    examples::print_json(json, {{"ahead", s.ahead}, {"chance", chance}, {"unidirectional", uni}, {"bidirectional", bi}});
    return EXIT_SUCCESS;
}
