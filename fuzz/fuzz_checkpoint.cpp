// Checkpoint::load from arbitrary bytes with a model, an Adam optimizer, a step schedule and a
// generator: every part is validated before any is changed, so a refused file (SafetensorsError,
// or std::invalid_argument from a part's validation) leaves all of them usable.

#include <rewind/autograd/ops.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/train/schedule.hpp>

#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const auto layer = rw::fuzz::fixture_layer();
    static rw::nn::Adam<double> adam(layer->named_parameters(), {});
    static rw::nn::StepDecay schedule(adam, 10);
    static rw::Generator generator(1);
    const auto& file = rw::fuzz::write_input("fuzz_checkpoint", data, size);
    try {
        rw::nn::Checkpoint<double>(*layer).with(adam).with(schedule).with("data", generator).load(file);
    } catch (const rw::nn::SafetensorsError&) {
    } catch (const std::invalid_argument&) {
    }
    // A training step with whatever state was loaded (weights from a file may hold NaN, which the
    // optimizer refuses by name).
    adam.zero_grad();
    rw::sum(layer->forward(rw::Tensor<double>::ones({2, 1, 3})).output).backward();
    try {
        adam.step();
    } catch (const rw::nn::NonFiniteError&) {
    }
    schedule.step();
    (void)generator.uniform();
    return 0;
}
