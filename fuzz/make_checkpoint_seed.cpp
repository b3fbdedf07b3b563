// fuzz_make_checkpoint_seed FILE: a valid checkpoint for fuzz_checkpoint to mutate (see
// fuzz/CMakeLists.txt); run once, its output is part of the repository's seed corpus.

#include <iostream>

#include <rewind/autograd/ops.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/train/schedule.hpp>

#include "fuzz_input.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: fuzz_make_checkpoint_seed FILE\n";
        return 2;
    }
    const auto layer = rw::fuzz::fixture_layer();
    rw::nn::Adam<double> adam(layer->named_parameters(), {});
    rw::nn::StepDecay schedule(adam, 10);
    rw::Generator generator(1);
    for (int step = 0; step < 2; ++step) {
        adam.zero_grad();
        rw::sum(layer->forward(rw::Tensor<double>::ones({2, 1, 3})).output).backward();
        adam.step();
        schedule.step();
    }
    rw::nn::Checkpoint<double>(*layer).with(adam).with(schedule).with("data", generator).save(argv[1], {{"epoch", "2"}});
    return 0;
}
