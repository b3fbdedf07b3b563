// A character-level language model trained with truncated backpropagation through time.
// The text is cut into `batch` contiguous streams read side by side; rw::nn::truncated_bptt
// walks them k1 characters at a time, carrying the LSTM state across chunks but letting
// gradients reach back only k2 steps, so memory and time per update stay bounded however long
// the text is. The last 10% of the text is held out for validation perplexity; on the short
// embedded text the model soon memorises its training part and validation perplexity turns
// back up (overfitting) after a dozen epochs, which a longer text avoids: --fortunes trains on
// the fortune cookies of Debian's fortunes-min/fortunes packages, --text on any file. Validation
// perplexity is compared with the unigram baseline: every character drawn with its frequency in
// the training text, no context at all.
//
//   build-dir/bin/char_lm [--text FILE | --fortunes NAME,...] [--epochs E] [--k1 K1] [--k2 K2]
//                         [--hidden H] [--batch B] [--sample N] [--temperature T] [--csv FILE]
//                         [--plot FILE.png] [--json] [--seed S] [--threads N]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/tbptt.hpp>

#include "char_text.hpp"
#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

// The text of fortune files (/usr/share/games/fortunes/NAME): the fortunes one after another,
// without the "%" lines that separate them.
std::string read_fortunes(const std::vector<std::string>& names) {
    std::string text;
    for (const auto& name : names) {
        const std::string path = "/usr/share/games/fortunes/" + name;
        std::ifstream in(path);
        if (!in) throw std::runtime_error("cannot read " + path + " (Debian's fortunes-min and fortunes packages; scripts/install-deps)");
        for (std::string line; std::getline(in, line);)
            if (line != "%") text += line + '\n';
    }
    return text;
}

// The perplexity on `text` of the training text's character frequencies (add-one smoothed).
double unigram_perplexity(const std::string& train, const std::string& text, const examples::Vocabulary& vocab) {
    std::vector<double> counts(vocab.size(), 1.0);
    for (char c : train) counts[std::size_t(vocab.index(c))] += 1;
    const double total = double(train.size() + vocab.size());
    double nll = 0;
    for (char c : text) nll -= std::log(counts[std::size_t(vocab.index(c))] / total);
    return std::exp(nll / double(text.size()));
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"character-level LSTM language model with truncated BPTT"};
    examples::CommonOptions common;
    std::string text_file, prompt = "Alice ";
    std::vector<std::string> fortunes;
    examples::CurveOptions curve_options;
    bool json = false;
    std::size_t epochs = 12, hidden = 128, batch = 16, sample_length = 200;
    TbpttOptions tbptt{.k1 = 16, .k2 = 32};
    double lr = 5e-3, temperature = 0.6;
    examples::add_common_options(app, common);
    auto* text_option = app.add_option("--text", text_file, "train on this file (bytes) instead of the embedded text");
    app.add_option("--fortunes", fortunes, "train on these fortune files of /usr/share/games/fortunes (e.g. fortunes,wisdom)")
        ->delimiter(',')
        ->excludes(text_option);
    app.add_option("--epochs", epochs, "passes over the text")->capture_default_str();
    app.add_option("--k1", tbptt.k1, "steps between updates")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--k2", tbptt.k2, "steps gradients flow back (>= k1)")->capture_default_str();
    app.add_option("--hidden", hidden, "LSTM hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", batch, "streams read side by side")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    app.add_option("--sample", sample_length, "characters to sample at the end")->capture_default_str();
    app.add_option("--temperature", temperature, "sampling temperature")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--prompt", prompt, "text the sample starts from")->capture_default_str();
    examples::add_curve_options(app, curve_options, "the perplexity curves");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    if (tbptt.k2 != 0 && tbptt.k2 < tbptt.k1) {
        fmt::print(stderr, "--k2 must be at least --k1 (or 0, meaning k2 = k1)\n");
        return EXIT_FAILURE;
    }

    std::string text = examples::kAlice;
    if (!text_file.empty()) {
        const auto contents = examples::read_text(text_file);
        if (!contents) {
            fmt::print(stderr, "cannot read {}\n", text_file);
            return EXIT_FAILURE;
        }
        text = *contents;
    }
    if (!fortunes.empty()) try {
        text = read_fortunes(fortunes);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}\n", e.what());
        return EXIT_FAILURE;
    }
    const examples::Vocabulary vocab(text + prompt);
    const std::size_t split = text.size() * 9 / 10;
    if (split / batch < 2 || text.size() - split < 2) {
        fmt::print(stderr, "the text ({} bytes) is too short for {} streams\n", text.size(), batch);
        return EXIT_FAILURE;
    }
    const examples::Streams train = examples::make_streams(text.substr(0, split), batch, vocab);
    const examples::Streams valid = examples::make_streams(text.substr(split), 1, vocab);
    // Scored on the same characters as the model: every validation character but the first.
    const double unigram = unigram_perplexity(text.substr(0, split), text.substr(split + 1, valid.targets.shape(0)), vocab);

    // The model: Embedding -> LSTM -> Linear, combined under one module for the optimizer.
    Generator init(common.seed + 1);
    Module<float> model;
    const auto embedding = model.register_module("embedding", std::make_shared<Embedding<float>>(vocab.size(), 32, init));
    const auto lstm = model.register_module("lstm", make_lstm<float>({.input_size = 32, .hidden_size = hidden, .seed = common.seed}));
    const auto head = model.register_module("head", std::make_shared<Linear<float>>(hidden, vocab.size(), init));
    const NamedTensors<float> parameters = model.named_parameters();
    Adam<float> adam(parameters, AdamOptions{.lr = lr});

    fmt::print("{} bytes, {} distinct; {} streams of {} steps; Embedding(32) -> LSTM({}); TBPTT k1 = {}, k2 = {}\n", text.size(),
               vocab.size(), batch, train.targets.shape(0), hidden, tbptt.k1, tbptt.k2 == 0 ? tbptt.k1 : tbptt.k2);
    fmt::print("validation perplexity of the unigram baseline (character frequencies alone): {:.3f}\n\n", unigram);
    examples::Curve curve{{"epoch", "train", "validation", "unigram"}, {}};
    examples::Progress progress("epoch", epochs, 0.0);
    double valid_perplexity = 0, best_perplexity = INFINITY;
    const auto& train_targets = train.targets;
    for (std::size_t epoch = 1; epoch <= epochs; ++epoch) {
        double loss_sum = 0;
        std::size_t counted = 0;
        adam.zero_grad();
        // The loss of one chunk: the outputs are those of the chunk's own steps [begin, end).
        auto chunk_loss = [&](const Tensor<float>& outputs, std::size_t begin, std::size_t end) {
            const xt::xarray<std::int64_t> targets = xt::view(train_targets, xt::range(begin, end), xt::all());
            return sequence_cross_entropy(head->forward(outputs), targets);
        };
        auto chunk_step = [&](const TbpttChunk<float>& chunk) {
            clip_grad_norm(parameters, 1.0);
            adam.step();
            adam.zero_grad();
            loss_sum += chunk.loss * double(chunk.end - chunk.begin);
            counted += chunk.end - chunk.begin;
        };
        // Each window's input is looked up anew, so the embedding is on that window's graph and
        // trained by every chunk's backward.
        auto window_input = [&](std::size_t from, std::size_t to) {
            return embedding->forward(xt::eval(xt::view(train.inputs, xt::range(from, to), xt::all())));
        };
        truncated_bptt<float>(*lstm, train.inputs.shape(0), window_input, tbptt, chunk_loss, chunk_step);

        NoGradGuard no_grad;
        const double valid_loss = sequence_cross_entropy(head->forward(lstm->forward(embedding->forward(valid.inputs)).output), valid.targets).item();
        const double train_perplexity = std::exp(loss_sum / double(counted));
        valid_perplexity = std::exp(valid_loss);
        best_perplexity = std::min(best_perplexity, valid_perplexity);
        curve.add({double(epoch), train_perplexity, valid_perplexity, unigram});
        if (epoch == 1 || epoch % std::max<std::size_t>(1, epochs / 10) == 0 || epoch == epochs)
            progress.update(epoch, [&] {
                return fmt::format("train perplexity {:7.3f}  validation perplexity {:7.3f}", train_perplexity, valid_perplexity);
            });
    }
    fmt::print("\nvalidation perplexity {:.3f} at the end (best {:.3f}), unigram baseline {:.3f}\n", valid_perplexity,
               best_perplexity, unigram);
    examples::save_curve(curve_options, curve, {.title = "character-level LSTM: perplexity per epoch", .x_label = "epoch",
                                                .y_label = "perplexity", .log_y = true});

    // Generation: read the prompt to set the state, then feed back each sampled character.
    NoGradGuard no_grad;
    Generator sampler(common.seed + 2);
    std::vector<Tensor<float>> state;
    std::string generated = prompt;
    auto feed = [&](char c) {
        xt::xarray<std::int64_t> index = xt::xarray<std::int64_t>::from_shape({1, 1});  // [T, B]
        index(0, 0) = vocab.index(c);
        auto result = lstm->forward(embedding->forward(index), state);
        state = result.state;
        return head->forward(reshape(result.output, {1, hidden})).value();
    };
    xt::xarray<float> logits;
    for (char c : prompt) logits = feed(c);
    for (std::size_t i = 0; i < sample_length; ++i) {
        generated += vocab.symbols[std::size_t(examples::sample(xt::view(logits, 0, xt::all()), temperature, sampler))];
        logits = feed(generated.back());
    }
    fmt::print("\nsample (temperature {}):\n{}\n", temperature, generated);
    examples::print_json(json, {{"bytes", text.size()}, {"epochs", epochs}, {"validation_perplexity", valid_perplexity},
                                {"best_validation_perplexity", best_perplexity}, {"unigram_perplexity", unigram}});
    return EXIT_SUCCESS;
}
