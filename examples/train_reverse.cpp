// Teaches an LSTM to reverse short sequences of symbols: it reads 5 symbols (of 6), then during
// 5 blank steps emits them backwards. A complete training loop with rewind: Embedding -> LSTM
// -> Linear, masked sequence cross-entropy, gradient clipping, Adam, a cosine learning-rate
// schedule and a checkpoint that can resume training exactly.
//
//   build-dir/bin/train_reverse [steps] [checkpoint.safetensors]
//
// When the checkpoint file exists, training resumes from it.

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <xtensor/xsort.hpp>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/checkpoint.hpp>
#include <rewind/nn/clip.hpp>
#include <rewind/nn/layers.hpp>
#include <rewind/nn/optim.hpp>
#include <rewind/nn/recurrent.hpp>
#include <rewind/nn/schedule.hpp>

using namespace rw;
using namespace rw::nn;

constexpr std::size_t length = 5, vocab = 6, blank = vocab, batch_size = 32;

struct Batch {
    xt::xarray<std::int64_t> inputs, targets;  // [2 * length, batch]
    xt::xarray<float> mask;                     // 1 where an answer is expected
};

Batch random_batch(Generator& data) {
    const std::size_t steps = 2 * length;
    Batch batch{xt::zeros<std::int64_t>({steps, batch_size}), xt::zeros<std::int64_t>({steps, batch_size}),
                xt::zeros<float>({steps, batch_size})};
    for (std::size_t b = 0; b < batch_size; ++b)
        for (std::size_t t = 0; t < length; ++t) {
            const auto symbol = std::int64_t(std::min(vocab - 1, std::size_t(data.uniform() * vocab)));
            batch.inputs(t, b) = symbol;
            batch.inputs(length + t, b) = blank;
            batch.targets(steps - 1 - t, b) = symbol;
            batch.mask(length + t, b) = 1;
        }
    return batch;
}

struct Reverser : Module<float> {
    explicit Reverser(std::uint64_t seed) {
        Generator init(seed);
        embedding = register_module("embedding", std::make_shared<Embedding<float>>(vocab + 1, 16, init));
        lstm = register_module("lstm", make_lstm<float>({.input_size = 16, .hidden_size = 48, .seed = seed + 1}));
        head = register_module("head", std::make_shared<Linear<float>>(48, vocab, init));
    }
    Tensor<float> logits(const Batch& batch) {
        return head->forward(lstm->forward(embedding->forward(batch.inputs)).output);
    }
    std::shared_ptr<Embedding<float>> embedding;
    std::shared_ptr<Recurrent<float>> lstm;
    std::shared_ptr<Linear<float>> head;
};

double accuracy(const Tensor<float>& logits, const Batch& batch) {
    double right = 0, total = 0;
    for (std::size_t t = length; t < 2 * length; ++t)
        for (std::size_t b = 0; b < batch_size; ++b, ++total)
            right += std::int64_t(xt::argmax(xt::view(logits.value(), t, b, xt::all()))()) == batch.targets(t, b);
    return right / total;
}

int main(int argc, char** argv) {
    const std::size_t steps = argc > 1 ? std::stoul(argv[1]) : 1000;
    const std::filesystem::path file = argc > 2 ? argv[2] : "train_reverse.safetensors";

    Reverser model(42);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = 0.01});
    CosineAnnealing schedule(adam, steps, 1e-4);
    Generator data(7);
    Checkpoint<float> checkpoint(model);
    checkpoint.with(adam).with(schedule).with("data", data).with("lstm", model.lstm->generator());

    std::size_t step = 0;
    if (std::filesystem::exists(file)) {
        step = std::stoul(checkpoint.load(file).at("step"));
        fmt::print("resumed from {} at step {}\n", file.string(), step);
    }
    double loss_sum = 0;
    for (++step; step <= steps; ++step) {
        const Batch batch = random_batch(data);
        adam.zero_grad();
        const Tensor<float> loss = sequence_cross_entropy(model.logits(batch), batch.targets,
                                                          std::optional<xt::xarray<float>>(batch.mask));
        loss.backward();
        const double norm = clip_grad_norm(model.named_parameters(), 5.0);
        adam.step();
        schedule.step();
        loss_sum += loss.item();
        if (step % 100 == 0) {
            fmt::print("step {:5}  loss {:.4f}  grad norm {:7.3f}  lr {:.2e}\n", step, loss_sum / 100, norm, adam.lr());
            loss_sum = 0;
            checkpoint.save(file, {{"step", std::to_string(step)}});
        }
    }

    model.eval();
    Generator held_out(12345);
    const Batch test = random_batch(held_out);
    NoGradGuard no_grad;
    fmt::print("held-out accuracy {:.3f}; checkpoint in {}\n", accuracy(model.logits(test), test), file.string());
    return EXIT_SUCCESS;
}
