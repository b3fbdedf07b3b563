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
#include <sstream>
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

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

// The opening of Lewis Carroll's "Alice's Adventures in Wonderland" (1865, public domain).
constexpr const char* kAlice = R"(Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?'

So she was considering in her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her.

There was nothing so very remarkable in that; nor did Alice think it so very much out of the way to hear the Rabbit say to itself, 'Oh dear! Oh dear! I shall be late!' (when she thought it over afterwards, it occurred to her that she ought to have wondered at this, but at the time it all seemed quite natural); but when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her feet, for it flashed across her mind that she had never before seen a rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across the field after it, and fortunately was just in time to see it pop down a large rabbit-hole under the hedge.

In another moment down went Alice after it, never once considering how in the world she was to get out again.

The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly down, so suddenly that Alice had not a moment to think about stopping herself before she found herself falling down a very deep well.

Either the well was very deep, or she fell very slowly, for she had plenty of time as she went down to look about her and to wonder what was going to happen next. First, she tried to look down and make out what she was coming to, but it was too dark to see anything; then she looked at the sides of the well, and noticed that they were filled with cupboards and book-shelves; here and there she saw maps and pictures hung upon pegs. She took down a jar from one of the shelves as she passed; it was labelled 'ORANGE MARMALADE', but to her great disappointment it was empty: she did not like to drop the jar for fear of killing somebody underneath, so managed to put it into one of the cupboards as she fell past it.
)";

struct Vocabulary {
    std::string symbols;  // sorted distinct bytes
    explicit Vocabulary(const std::string& text) : symbols(text) {
        std::sort(symbols.begin(), symbols.end());
        symbols.erase(std::unique(symbols.begin(), symbols.end()), symbols.end());
    }
    std::size_t size() const { return symbols.size(); }
    std::int64_t index(char c) const { return std::int64_t(symbols.find(c)); }
};

// Input and next-character indices for `batch` streams cut from text side by side:
// stream b is text[b * n, (b + 1) * n].
struct Streams {
    xt::xarray<std::int64_t> inputs;     // [n - 1, batch]
    xt::xarray<std::int64_t> targets;    // [n - 1, batch]
};

Streams make_streams(const std::string& text, std::size_t batch, const Vocabulary& vocab) {
    const std::size_t n = text.size() / batch;
    Streams streams{xt::zeros<std::int64_t>({n - 1, batch}), xt::zeros<std::int64_t>({n - 1, batch})};
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t t = 0; t + 1 < n; ++t) {
            streams.inputs(t, b) = vocab.index(text[b * n + t]);
            streams.targets(t, b) = vocab.index(text[b * n + t + 1]);
        }
    return streams;
}

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
double unigram_perplexity(const std::string& train, const std::string& text, const Vocabulary& vocab) {
    std::vector<double> counts(vocab.size(), 1.0);
    for (char c : train) counts[std::size_t(vocab.index(c))] += 1;
    const double total = double(train.size() + vocab.size());
    double nll = 0;
    for (char c : text) nll -= std::log(counts[std::size_t(vocab.index(c))] / total);
    return std::exp(nll / double(text.size()));
}

// Draws from softmax(logits / temperature): lower temperatures are more conservative.
std::int64_t sample(const xt::xarray<float>& logits, double temperature, Generator& generator) {
    xt::xarray<double> p = xt::exp((xt::cast<double>(logits) - double(xt::amax(logits)())) / temperature);
    p /= xt::sum(p)();
    double u = generator.uniform();
    for (std::size_t i = 0; i < p.size(); ++i)
        if ((u -= p(i)) < 0) return std::int64_t(i);
    return std::int64_t(p.size() - 1);
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

    std::string text = kAlice;
    if (!text_file.empty()) {
        std::ifstream in(text_file, std::ios::binary);
        if (!in) {
            fmt::print(stderr, "cannot read {}\n", text_file);
            return EXIT_FAILURE;
        }
        std::ostringstream contents;
        contents << in.rdbuf();
        text = contents.str();
    }
    if (!fortunes.empty()) try {
        text = read_fortunes(fortunes);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}\n", e.what());
        return EXIT_FAILURE;
    }
    const Vocabulary vocab(text + prompt);
    const std::size_t split = text.size() * 9 / 10;
    if (split / batch < 2 || text.size() - split < 2) {
        fmt::print(stderr, "the text ({} bytes) is too short for {} streams\n", text.size(), batch);
        return EXIT_FAILURE;
    }
    const Streams train = make_streams(text.substr(0, split), batch, vocab);
    const Streams valid = make_streams(text.substr(split), 1, vocab);
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
        generated += vocab.symbols[std::size_t(sample(xt::view(logits, 0, xt::all()), temperature, sampler))];
        logits = feed(generated.back());
    }
    fmt::print("\nsample (temperature {}):\n{}\n", temperature, generated);
    examples::print_json(json, {{"bytes", text.size()}, {"epochs", epochs}, {"validation_perplexity", valid_perplexity},
                                {"best_validation_perplexity", best_perplexity}, {"unigram_perplexity", unigram}});
    return EXIT_SUCCESS;
}
