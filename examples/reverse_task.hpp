#pragma once
// The sequence-reversal task shared by rewind-demo and train_reverse: the model reads `length`
// symbols (of `vocab`), then during `length` blank steps must emit them backwards. It needs
// memory over the whole sequence and its answer is checkable, so accuracy means something.

#include <algorithm>
#include <cstdint>
#include <memory>

#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "common.hpp"

namespace examples::reverse {

struct Task {
    std::size_t length = 5, vocab = 6, batch = 32;
    std::size_t steps() const { return 2 * length; }
    std::int64_t blank() const { return std::int64_t(vocab); }  // one extra input symbol
};

struct Batch {
    xt::xarray<std::int64_t> inputs, targets;  // [2 * length, batch], time-major
    xt::xarray<float> mask;                     // 1 where an answer is expected (the blank half)
};

inline Batch random_batch(const Task& task, rw::Generator& data) {
    const std::size_t steps = task.steps();
    Batch batch{xt::zeros<std::int64_t>({steps, task.batch}), xt::zeros<std::int64_t>({steps, task.batch}),
                xt::zeros<float>({steps, task.batch})};
    for (std::size_t b = 0; b < task.batch; ++b)
        for (std::size_t t = 0; t < task.length; ++t) {
            const auto symbol = std::int64_t(std::min(task.vocab - 1, std::size_t(data.uniform() * double(task.vocab))));
            batch.inputs(t, b) = symbol;
            batch.inputs(task.length + t, b) = task.blank();
            batch.targets(steps - 1 - t, b) = symbol;
            batch.mask(task.length + t, b) = 1;
        }
    return batch;
}

// Embedding -> LSTM -> Linear, registered as children so that named_parameters(), optimizers
// and checkpoints see one model.
struct Model : rw::nn::Module<float> {
    Model(const Task& task, std::size_t embed, std::size_t hidden, std::uint64_t seed) {
        rw::Generator init(seed);
        embedding = register_module("embedding", std::make_shared<rw::nn::Embedding<float>>(task.vocab + 1, embed, init));
        lstm = register_module("lstm", rw::nn::make_lstm<float>({.input_size = embed, .hidden_size = hidden, .seed = seed + 1}));
        head = register_module("head", std::make_shared<rw::nn::Linear<float>>(hidden, task.vocab, init));
    }
    rw::Tensor<float> logits(const Batch& batch) const {
        return head->forward(lstm->forward(embedding->forward(batch.inputs)).output);
    }
    rw::Tensor<float> loss(const Batch& batch) const {
        return rw::nn::sequence_cross_entropy(logits(batch), batch.targets, std::optional<xt::xarray<float>>(batch.mask));
    }
    std::shared_ptr<rw::nn::Embedding<float>> embedding;
    std::shared_ptr<rw::nn::Recurrent<float>> lstm;
    std::shared_ptr<rw::nn::Linear<float>> head;
};

// Fraction of answer positions where the arg-max symbol is right.
inline double accuracy(const rw::Tensor<float>& logits, const Batch& batch) {
    return masked_accuracy(logits.value(), batch.targets, batch.mask);
}

}  // namespace examples::reverse
