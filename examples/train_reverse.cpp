// The reversal task of rewind-demo (reverse_task.hpp) as a complete training loop: masked
// sequence cross-entropy, gradient clipping, Adam, a cosine learning-rate schedule, and a
// checkpoint from which an interrupted run resumes exactly where it stopped.
//
//   build-dir/bin/train_reverse [--steps N] [--checkpoint FILE] [--seed S] [--threads N]
//
// When the checkpoint file exists, training resumes from it (delete it to start over).

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/train/schedule.hpp>

#include "common.hpp"
#include "reverse_task.hpp"

using namespace rw;
using namespace rw::nn;
namespace reverse = examples::reverse;

int main(int argc, char** argv) {
    CLI::App app{"train an LSTM to reverse sequences, with checkpoints"};
    examples::CommonOptions common{.seed = 42};
    std::size_t steps = 1000, save_every = 100;
    std::filesystem::path file = "train_reverse.safetensors";
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "total training steps (the schedule spans them)")->capture_default_str();
    app.add_option("--save-every", save_every, "steps between checkpoints")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--checkpoint", file, "checkpoint file, resumed from when it exists")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    const reverse::Task task;
    reverse::Model model(task, {.embed = 16, .hidden = 48}, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = 0.01});
    CosineAnnealing schedule(adam, steps, 1e-4);
    Generator data(common.seed + 100);
    // Everything that decides what happens next goes into the checkpoint, the data generator
    // too: a resumed run then sees the same batches it would have seen.
    Checkpoint<float> checkpoint(model);
    checkpoint.with(adam).with(schedule).with("data", data).with("lstm", model.lstm->generator());

    std::size_t step = 0;
    if (std::filesystem::exists(file)) {
        step = std::stoul(checkpoint.load(file).at("step"));
        fmt::print("resumed from {} at step {}\n", file.string(), step);
    }
    double loss_sum = 0;
    for (++step; step <= steps; ++step) {
        const reverse::Batch batch = reverse::random_batch(task, data);
        adam.zero_grad();
        const Tensor<float> loss = model.loss(batch);
        loss.backward();
        const double norm = clip_grad_norm(model.named_parameters(), 5.0);
        adam.step();
        schedule.step();
        loss_sum += loss.item();
        if (step % save_every == 0) {
            fmt::print("step {:5}  loss {:.4f}  grad norm {:7.3f}  lr {:.2e}\n", step, loss_sum / double(save_every), norm,
                       adam.lr());
            loss_sum = 0;
            checkpoint.save(file, {{"step", std::to_string(step)}});
        }
    }

    model.eval();
    Generator held_out(12345);
    const reverse::Batch test = reverse::random_batch(task, held_out);
    NoGradGuard no_grad;
    fmt::print("held-out accuracy {:.3f}; checkpoint in {}\n", reverse::accuracy(model.logits(test), test), file.string());
    return EXIT_SUCCESS;
}
