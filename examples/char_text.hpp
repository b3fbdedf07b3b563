#pragma once
// The text a character language model trains on: the embedded opening of "Alice" (or a file),
// its vocabulary, and the streams cut from it that truncated BPTT reads side by side.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xmath.hpp>

#include <rewind/autograd/random.hpp>

namespace examples {

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

inline Streams make_streams(const std::string& text, std::size_t batch, const Vocabulary& vocab) {
    const std::size_t n = text.size() / batch;
    Streams streams{xt::zeros<std::int64_t>({n - 1, batch}), xt::zeros<std::int64_t>({n - 1, batch})};
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t t = 0; t + 1 < n; ++t) {
            streams.inputs(t, b) = vocab.index(text[b * n + t]);
            streams.targets(t, b) = vocab.index(text[b * n + t + 1]);
        }
    return streams;
}

// Draws from softmax(logits / temperature): lower temperatures are more conservative.
inline std::int64_t sample(const xt::xarray<float>& logits, double temperature, rw::Generator& generator) {
    xt::xarray<double> p = xt::exp((xt::cast<double>(logits) - double(xt::amax(logits)())) / temperature);
    p /= xt::sum(p)();
    double u = generator.uniform();
    for (std::size_t i = 0; i < p.size(); ++i)
        if ((u -= p(i)) < 0) return std::int64_t(i);
    return std::int64_t(p.size() - 1);
}

// The bytes of `file`, or nothing when it cannot be read.
inline std::optional<std::string> read_text(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream contents;
    contents << in.rdbuf();
    return contents.str();
}

}  // namespace examples
