#pragma once
// The sequence-reversal task shared by rewind-demo, train_reverse and the training tests
// (tests/test_checkpoint.cpp): the model reads `length` symbols (of `vocab`), then during `length`
// blank steps must emit them backwards. It needs memory over the whole sequence and its answer is
// checkable, so accuracy means something.

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

struct ModelOptions {
    std::size_t embed = 16, hidden = 48;
    double dropout = 0.0;      // on the embeddings, in training mode
    double variational = 0.0;  // variational dropout of the LSTM's input and recurrent h (Gal & Ghahramani)
};

// Embedding -> Dropout -> LSTM -> Linear, registered as children so that named_parameters(),
// optimizers and checkpoints see one model; the dropouts' masks come from model.dropout's and
// model.lstm's generators (a checkpoint that resumes exactly saves those too).
struct Model : rw::nn::Module<float> {
    Model(const Task& task, const ModelOptions& options, std::uint64_t seed) {
        rw::Generator init(seed);
        embedding =
            register_module("embedding", std::make_shared<rw::nn::Embedding<float>>(task.vocab + 1, options.embed, init));
        dropout = register_module("dropout", std::make_shared<rw::nn::Dropout<float>>(options.dropout, seed + 2));
        const rw::nn::RecurrentOptions recurrent{.input_size = options.embed, .hidden_size = options.hidden, .seed = seed + 1};
        lstm = register_module("lstm", options.variational > 0
                                           ? rw::nn::make_variational_recurrent<float>(
                                                 "lstm", recurrent, {options.variational, options.variational})
                                           : rw::nn::make_lstm<float>(recurrent));
        head = register_module("head", std::make_shared<rw::nn::Linear<float>>(options.hidden, task.vocab, init));
    }
    rw::Tensor<float> logits(const Batch& batch) const {
        return head->forward(lstm->forward(dropout->forward(embedding->forward(batch.inputs))).output);
    }
    rw::Tensor<float> loss(const Batch& batch) const {
        return rw::nn::sequence_cross_entropy(logits(batch), batch.targets, std::optional<xt::xarray<float>>(batch.mask));
    }
    std::shared_ptr<rw::nn::Embedding<float>> embedding;
    std::shared_ptr<rw::nn::Dropout<float>> dropout;
    std::shared_ptr<rw::nn::Recurrent<float>> lstm;
    std::shared_ptr<rw::nn::Linear<float>> head;
};

// Fraction of answer positions where the arg-max symbol is right.
inline double accuracy(const rw::Tensor<float>& logits, const Batch& batch) {
    return masked_accuracy(logits.value(), batch.targets, batch.mask);
}

}  // namespace examples::reverse
