// Many-to-one on real text: which language is a single word from? The words are Debian's word
// lists (wamerican, wfrench, wngerman, witalian, wspanish in /usr/share/dict, installed by
// scripts/install-deps), lower-cased, without words that are in more than one list. A
// character-level (byte-level: accented letters are two UTF-8 bytes) bidirectional GRU reads
// each word, variable lengths in one padded batch; the final states of both directions feed a
// linear classifier. Held-out accuracy against the majority-class baseline, and a confusion
// table.
//
//   build-dir/bin/language_id [--steps N] [--hidden H] [--train-words N] [--test-words N]
//                             [--dict DIR] [--json] [--seed S] [--threads N]

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/nn.hpp>

#include "common.hpp"

using namespace rw;
using namespace rw::nn;

namespace {

const std::vector<std::pair<std::string, std::string>> kLanguages{
    {"english", "american-english"}, {"french", "french"}, {"german", "ngerman"}, {"italian", "italian"}, {"spanish", "spanish"}};
constexpr std::size_t kMaxBytes = 20;

struct Word {
    std::string text;
    std::int64_t language;
};

// Every word of every list, lower-cased (ASCII letters; accented capitals are rare at the start
// of a word and left as they are), that is made of letters only, at most kMaxBytes long and
// found in exactly one list.
std::vector<Word> load_words(const std::string& dict) {
    std::map<std::string, std::int64_t> language_of;  // -1: in more than one list
    for (std::size_t l = 0; l < kLanguages.size(); ++l) {
        const std::string path = dict + "/" + kLanguages[l].second;
        std::ifstream in(path);
        if (!in) throw std::runtime_error("cannot read " + path + " (Debian's word lists; scripts/install-deps)");
        for (std::string line; std::getline(in, line);) {
            if (line.empty() || line.size() > kMaxBytes) continue;
            bool letters = true;
            for (auto& c : line) {
                const auto u = static_cast<unsigned char>(c);
                if (u < 128 && !std::isalpha(u)) letters = false;
                if (u < 128) c = char(std::tolower(u));
            }
            if (!letters) continue;
            auto [it, inserted] = language_of.emplace(line, std::int64_t(l));
            if (!inserted && it->second != std::int64_t(l)) it->second = -1;
        }
    }
    std::vector<Word> words;
    for (const auto& [text, language] : language_of)
        if (language >= 0) words.push_back({text, language});
    return words;
}

struct Batch {
    xt::xarray<std::int64_t> bytes;  // [T, B], 0 past each word's end
    std::vector<std::int64_t> lengths, labels;
};

Batch make_batch(const std::vector<const Word*>& words) {
    std::size_t longest = 0;
    for (const auto* w : words) longest = std::max(longest, w->text.size());
    Batch b{xt::zeros<std::int64_t>({longest, words.size()}), {}, {}};
    for (std::size_t i = 0; i < words.size(); ++i) {
        for (std::size_t t = 0; t < words[i]->text.size(); ++t) b.bytes(t, i) = static_cast<unsigned char>(words[i]->text[t]);
        b.lengths.push_back(std::int64_t(words[i]->text.size()));
        b.labels.push_back(words[i]->language);
    }
    return b;
}

struct Classifier : Module<float> {
    Classifier(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        embedding = register_module("embedding", std::make_shared<Embedding<float>>(256, 16, init));
        gru = register_module("gru", make_gru<float>({.input_size = 16, .hidden_size = hidden, .bidirectional = true, .seed = seed}));
        head = register_module("head", std::make_shared<Linear<float>>(2 * hidden, kLanguages.size(), init));
    }
    // h_n holds the forward direction after each word's last byte and the reverse one after its
    // first: [2, B, H] -> [B, 2H].
    Tensor<float> logits(const Batch& b) const {
        const Tensor<float> h_n = gru->forward(embedding->forward(b.bytes), {}, b.lengths).h_n();
        const std::size_t batch = h_n.size(1), hidden = h_n.size(2);
        return head->forward(reshape(permute(h_n, {1, 0, 2}), {batch, 2 * hidden}));
    }
    std::shared_ptr<Embedding<float>> embedding;
    std::shared_ptr<Recurrent<float>> gru;
    std::shared_ptr<Linear<float>> head;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"language identification of single words with a character-level bidirectional GRU"};
    examples::CommonOptions common;
    std::size_t steps = 600, hidden = 32, batch = 64, train_words = 50000, test_words = 2000;
    double lr = 1e-2;
    std::string dict = "/usr/share/dict";
    bool json = false;
    examples::CurveOptions curve_options;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--hidden", hidden, "GRU hidden size per direction")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", batch, "words per step")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    app.add_option("--train-words", train_words, "words to train on (drawn from all lists)")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--test-words", test_words, "held-out words")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--dict", dict, "directory of the word lists")->capture_default_str();
    examples::add_curve_options(app, curve_options, "the training loss per step (and its running average)");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    std::vector<Word> words;
    try {
        words = load_words(dict);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}\n", e.what());
        return EXIT_FAILURE;
    }
    // One shuffle; held-out words first, then the training words, disjoint.
    Generator data(common.seed + 1);
    for (std::size_t i = words.size() - 1; i > 0; --i) std::swap(words[i], words[std::size_t(data.uniform(0, double(i + 1)))]);
    test_words = std::min(test_words, words.size() / 2);
    train_words = std::min(train_words, words.size() - test_words);
    std::vector<const Word*> test, train;
    for (std::size_t i = 0; i < test_words; ++i) test.push_back(&words[i]);
    for (std::size_t i = test_words; i < test_words + train_words; ++i) train.push_back(&words[i]);

    std::vector<double> share(kLanguages.size(), 0.0);
    for (const auto* w : test) share[std::size_t(w->language)] += 1.0 / double(test.size());
    const auto majority = std::size_t(examples::arg_max(share));
    fmt::print("{} words in exactly one list; training on {}, {} held out. Held-out shares:", words.size(), train.size(),
               test.size());
    for (std::size_t l = 0; l < kLanguages.size(); ++l) fmt::print(" {} {:.1f}%", kLanguages[l].first, 100 * share[l]);
    fmt::print("\nmajority-class baseline (always {}): {:.3f}\n\n", kLanguages[majority].first, share[majority]);

    Classifier model(hidden, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = lr});
    examples::Progress progress("step", steps);
    std::vector<const Word*> chosen(batch);
    double loss_average = 0;
    examples::Curve curve{{"step", "loss", "running average"}, {}};
    for (std::size_t step = 1; step <= steps; ++step) {
        for (auto& w : chosen) w = train[std::size_t(data.uniform(0, double(train.size())))];
        const Batch b = make_batch(chosen);
        adam.zero_grad();
        const Tensor<float> loss = cross_entropy(model.logits(b), b.labels);
        loss.backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        loss_average = step == 1 ? loss.item() : 0.98 * loss_average + 0.02 * loss.item();
        curve.add({double(step), loss.item(), loss_average});
        progress.update(step, [&] { return fmt::format("loss {:.3f}", loss_average); });
    }
    examples::save_curve(curve_options, curve,
                         {.title = "language of a word: training loss", .x_label = "training step",
                          .y_label = "cross-entropy"});

    NoGradGuard no_grad;
    const Batch held_out = make_batch(test);
    const xt::xarray<float> logits = model.logits(held_out).value();
    std::vector<std::vector<std::size_t>> confusion(kLanguages.size(), std::vector<std::size_t>(kLanguages.size(), 0));
    double right = 0;
    for (std::size_t i = 0; i < test.size(); ++i) {
        const auto predicted = std::size_t(examples::arg_max(xt::view(logits, i, xt::all())));
        ++confusion[std::size_t(held_out.labels[i])][predicted];
        right += predicted == std::size_t(held_out.labels[i]);
    }
    const double accuracy = right / double(test.size());
    fmt::print("\nconfusion on the held-out words (rows: true language, columns: predicted)\n{:>10}", "");
    for (const auto& [name, file] : kLanguages) fmt::print("{:>9}", name.substr(0, 7));
    fmt::print("\n");
    for (std::size_t l = 0; l < kLanguages.size(); ++l) {
        fmt::print("{:>10}", kLanguages[l].first);
        for (auto count : confusion[l]) fmt::print("{:>9}", count);
        fmt::print("\n");
    }
    fmt::print("\nheld-out accuracy {:.3f}, majority-class baseline {:.3f}\n", accuracy, share[majority]);
    nlohmann::json summary{{"accuracy", accuracy}, {"majority_baseline", share[majority]}, {"test_words", test.size()},
                           {"confusion", confusion}};
    examples::print_json(json, summary);
    return EXIT_SUCCESS;
}
