// What the examples of a user's cell with fused rules (fused_mgu, ln_lstm) do alike: gradcheck the
// cell's fused layer against central differences, and train it on the adding problem on the fused
// path. Each example keeps only what is its own: the cell, its check and its timings.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/train/optim.hpp>

#include "adding_task.hpp"
#include "common.hpp"

namespace examples {

// The user's cell as a one-layer recurrent layer, and a linear head reading the sum from h_n.
struct AddingModel : rw::nn::Module<float> {
    AddingModel(const std::string& name, rw::nn::CellFactory<float> factory, std::size_t hidden, std::uint64_t seed) {
        rw::Generator init(seed);
        rnn = register_module(name, std::make_shared<rw::nn::Recurrent<float>>(
                                        std::move(factory), rw::nn::RecurrentOptions{.input_size = 2, .hidden_size = hidden, .seed = seed}));
        head = register_module("head", std::make_shared<rw::nn::Linear<float>>(hidden, 1, init));
    }
    rw::Tensor<float> predict(const adding::Batch& a) const {
        const rw::Tensor<float> h_n = rnn->forward(a.x, {}, a.lengths).h_n();  // [1, B, H]
        return head->forward(rw::reshape(h_n, {h_n.size(1), h_n.size(2)}));
    }
    std::shared_ptr<rw::nn::Recurrent<float>> rnn;
    std::shared_ptr<rw::nn::Linear<float>> head;
};

struct FusedGradcheck {
    rw::GradcheckReport report;
    bool fused = false;  // the fused rules ran, not a fallback to the generic path
};

// Two layers, both directions, lengths {5, 2, 4}, float64: the fused layer against central differences.
inline FusedGradcheck gradcheck_fused_layer(rw::nn::CellFactory<double> factory, std::uint64_t seed) {
    auto layer = std::make_shared<rw::nn::Recurrent<double>>(
        std::move(factory),
        rw::nn::RecurrentOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true, .seed = seed});
    rw::Generator data(seed + 1);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    FusedGradcheck result{gradcheck_layer(*layer, 5, lengths.size(), data, lengths), layer->uses_fused()};
    fmt::print("gradcheck on the fused path ({}), 2 layers, bidirectional, lengths {{5, 2, 4}}:\n{}\n",
               result.fused ? "fused rules ran" : "NOT fused: " + layer->path_note(), result.report);
    return result;
}

struct AddingTraining {
    double mse = 0;             // held-out MSE after the last step
    bool trained_fused = true;  // every step ran the fused rules
};

// Adam (lr 1e-2), gradients clipped at norm 1, sequences of length/2..length; the held-out MSE
// printed five times on the way.
inline AddingTraining train_adding_fused(AddingModel& model, std::size_t steps, std::size_t length, std::size_t batch,
                                         std::uint64_t seed) {
    rw::nn::Adam<float> adam(model.named_parameters(), rw::nn::AdamOptions{.lr = 1e-2});
    rw::Generator data(seed + 2);
    const adding::Batch held_out = adding::random_batch(length / 2, length, 256, data);
    auto held_out_mse = [&] {
        rw::NoGradGuard no_grad;
        return double(rw::mse_loss(model.predict(held_out), held_out.target).item());
    };
    fmt::print("adding problem, lengths {}..{}, held-out MSE (predicting the mean: {:.4f}):\n", length / 2, length,
               adding::kMeanBaselineMse);
    AddingTraining result{held_out_mse()};
    fmt::print("  step {:4}  MSE {:.4f}\n", 0, result.mse);
    for (std::size_t step = 1; step <= steps; ++step) {
        const adding::Batch a = adding::random_batch(length / 2, length, batch, data);
        adam.zero_grad();
        rw::mse_loss(model.predict(a), a.target).backward();
        result.trained_fused = result.trained_fused && model.rnn->uses_fused();
        rw::nn::clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        if (step % std::max<std::size_t>(1, steps / 5) == 0 || step == steps)
            fmt::print("  step {:4}  MSE {:.4f}\n", step, result.mse = held_out_mse());
    }
    return result;
}

}  // namespace examples
