// Sequence to sequence with different input and output lengths: English number words to digits,
// "seven hundred four" -> "704", "twelve" -> "12". An encoder GRU reads the words (1 to 4 of
// them, variable lengths); its final state starts a decoder GRU that writes digits and then an
// end symbol. Training uses teacher forcing (the decoder reads the true previous digit); at test
// time decoding is greedy, step by step, each step fed the decoder's own previous prediction.
// The numbers are split into training and held-out ones, so the held-out sequence accuracy is
// on numbers never seen whole; the baseline of a model that ignores its input is 1/N at best.
//
//   build-dir/bin/seq2seq [--steps N] [--hidden H] [--held-out FRACTION] [--json] [--seed S] [--threads N]

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

const std::vector<std::string> kWords{"zero",    "one",     "two",       "three",    "four",     "five",
                                      "six",     "seven",   "eight",     "nine",     "ten",      "eleven",
                                      "twelve",  "thirteen", "fourteen", "fifteen",  "sixteen",  "seventeen",
                                      "eighteen", "nineteen", "twenty",  "thirty",   "forty",    "fifty",
                                      "sixty",   "seventy", "eighty",    "ninety",   "hundred"};

// The words of n (0..999) as indices into kWords.
std::vector<std::int64_t> spell(int n) {
    std::vector<std::int64_t> words;
    if (n >= 100) {
        words = {n / 100, 28};
        n %= 100;
        if (n == 0) return words;
    }
    if (n < 20) words.push_back(n);
    else {
        words.push_back(20 + n / 10 - 2);
        if (n % 10) words.push_back(n % 10);
    }
    return words;
}

std::string spelled(int n) {
    std::string text;
    for (auto w : spell(n)) text += (text.empty() ? "" : " ") + kWords[std::size_t(w)];
    return text;
}

// Digits 0-9 are symbols 0-9; the decoder also reads a start symbol and writes an end symbol.
constexpr std::int64_t kEnd = 10, kStart = 10;
constexpr std::size_t kDigitSymbols = 11, kMaxWords = 4, kMaxDigits = 3;

struct Batch {
    xt::xarray<std::int64_t> words;        // [4, B], padded with 0 past each length
    std::vector<std::int64_t> lengths;
    xt::xarray<std::int64_t> decoder_in;   // [4, B]: start, d1, d2, d3 (teacher forcing)
    xt::xarray<std::int64_t> targets;      // [4, B]: d1, ..., end
    xt::xarray<float> mask;                // up to and including the end symbol
};

Batch make_batch(const std::vector<int>& numbers) {
    const std::size_t B = numbers.size(), T = kMaxDigits + 1;
    Batch b{xt::zeros<std::int64_t>({kMaxWords, B}), {}, xt::zeros<std::int64_t>({T, B}), xt::zeros<std::int64_t>({T, B}),
            xt::zeros<float>({T, B})};
    for (std::size_t i = 0; i < B; ++i) {
        const auto words = spell(numbers[i]);
        for (std::size_t t = 0; t < words.size(); ++t) b.words(t, i) = words[t];
        b.lengths.push_back(std::int64_t(words.size()));
        const std::string digits = std::to_string(numbers[i]);
        b.decoder_in(0, i) = kStart;
        for (std::size_t t = 0; t < digits.size(); ++t) {
            b.decoder_in(t + 1, i) = digits[t] - '0';
            b.targets(t, i) = digits[t] - '0';
        }
        b.targets(digits.size(), i) = kEnd;
        for (std::size_t t = 0; t <= digits.size(); ++t) b.mask(t, i) = 1;
    }
    return b;
}

struct Seq2Seq : Module<float> {
    Seq2Seq(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        source_embedding = register_module("source_embedding", std::make_shared<Embedding<float>>(kWords.size(), 16, init));
        encoder = register_module("encoder", make_gru<float>({.input_size = 16, .hidden_size = hidden, .seed = seed}));
        target_embedding = register_module("target_embedding", std::make_shared<Embedding<float>>(kDigitSymbols, 16, init));
        decoder = register_module("decoder", make_gru<float>({.input_size = 16, .hidden_size = hidden, .seed = seed + 1}));
        head = register_module("head", std::make_shared<Linear<float>>(hidden, kDigitSymbols, init));
    }
    // The encoder's state after each sequence's own last word: [1, B, H].
    Tensor<float> encode(const Batch& b) const {
        return encoder->forward(source_embedding->forward(b.words), {}, b.lengths).h_n();
    }
    Tensor<float> teacher_forced_loss(const Batch& b) const {
        const Tensor<float> logits = head->forward(decoder->forward(target_embedding->forward(b.decoder_in), {encode(b)}).output);
        return sequence_cross_entropy(logits, b.targets, std::optional(b.mask));
    }
    // Greedy decoding: one decoder step at a time from the start symbol, each step reading the
    // previous step's arg-max, until the end symbol (or the longest possible answer).
    std::vector<std::string> decode(const Batch& b) const {
        const std::size_t B = b.lengths.size();
        std::vector<Tensor<float>> state{encode(b)};
        xt::xarray<std::int64_t> previous = xt::xarray<std::int64_t>::from_shape({1, B});
        previous.fill(kStart);
        std::vector<std::string> answers(B);
        std::vector<bool> done(B, false);
        for (std::size_t step = 0; step <= kMaxDigits; ++step) {
            auto result = decoder->forward(target_embedding->forward(previous), state);  // one step: [1, B, H]
            state = result.state;
            const xt::xarray<float> logits = head->forward(result.output).value();     // [1, B, 11]
            for (std::size_t i = 0; i < B; ++i) {
                const std::int64_t symbol = examples::arg_max(xt::view(logits, 0, i, xt::all()));
                previous(0, i) = symbol;
                if (symbol == kEnd) done[i] = true;
                if (!done[i]) answers[i] += char('0' + symbol);
            }
        }
        return answers;
    }
    std::shared_ptr<Embedding<float>> source_embedding, target_embedding;
    std::shared_ptr<Recurrent<float>> encoder, decoder;
    std::shared_ptr<Linear<float>> head;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"encoder-decoder GRUs: number words to digits, greedy step-by-step decoding"};
    examples::CommonOptions common;
    std::size_t steps = 1500, hidden = 64, batch = 32;
    double lr = 5e-3, held_out_fraction = 0.15;
    bool json = false;
    examples::CurveOptions curve_options;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", hidden, "encoder and decoder hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    app.add_option("--held-out", held_out_fraction, "fraction of 0..999 never trained on")
        ->check(CLI::Range(0.01, 0.9))
        ->capture_default_str();
    examples::add_curve_options(app, curve_options, "the teacher-forced training loss per step");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    Generator data(common.seed + 1);
    std::vector<int> numbers(1000);
    for (int n = 0; n < 1000; ++n) numbers[std::size_t(n)] = n;
    for (std::size_t i = numbers.size() - 1; i > 0; --i) std::swap(numbers[i], numbers[std::size_t(data.uniform(0, double(i + 1)))]);
    const auto split = numbers.end() - std::ptrdiff_t(double(numbers.size()) * held_out_fraction);
    const std::vector<int> train(numbers.begin(), split), test(split, numbers.end());

    Seq2Seq model(hidden, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = lr});
    fmt::print("number words -> digits: {} numbers to train on, {} held out; encoder and decoder GRU({})\n\n", train.size(),
               test.size(), hidden);
    examples::Progress progress("step", steps);
    std::vector<int> chosen(batch);
    examples::Curve curve{{"step", "teacher-forced loss"}, {}};
    for (std::size_t step = 1; step <= steps; ++step) {
        for (auto& n : chosen) n = train[std::size_t(data.uniform(0, double(train.size())))];
        adam.zero_grad();
        const Tensor<float> loss = model.teacher_forced_loss(make_batch(chosen));
        loss.backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        curve.add({double(step), loss.item()});
        progress.update(step, [&] { return fmt::format("teacher-forced loss {:.4f}", loss.item()); });
    }
    examples::save_curve(curve_options, curve,
                         {.title = "number words -> digits: teacher-forced training loss", .x_label = "training step",
                          .y_label = "cross-entropy per symbol", .log_y = true});

    NoGradGuard no_grad;
    auto sequence_accuracy = [&](const std::vector<int>& which, bool show) {
        const std::vector<std::string> answers = model.decode(make_batch(which));
        double right = 0;
        for (std::size_t i = 0; i < which.size(); ++i) {
            const bool ok = answers[i] == std::to_string(which[i]);
            right += ok;
            if (show && i < 8) fmt::print("  {:<28} -> {:<4} {}\n", spelled(which[i]), answers[i], ok ? "" : "(wrong)");
        }
        return right / double(which.size());
    };
    fmt::print("\ngreedy decoding of held-out numbers:\n");
    const double test_accuracy = sequence_accuracy(test, true);
    const double train_accuracy = sequence_accuracy(train, false);
    fmt::print("\nsequence accuracy (every digit and the end right): held out {:.3f}, training {:.3f}\n", test_accuracy,
               train_accuracy);
    examples::print_json(json, {{"held_out_sequence_accuracy", test_accuracy},
                                {"train_sequence_accuracy", train_accuracy},
                                {"held_out", test.size()}});
    return EXIT_SUCCESS;
}
