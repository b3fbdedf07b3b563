// load_state_dict from arbitrary bytes into an LSTM, strict and not: names, shapes and dtypes of
// a hostile file. Refusals are SafetensorsError; the layer must still run afterwards.

#include <rewind/nn/io/state_dict.hpp>

#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const auto layer = rw::fuzz::fixture_layer();
    const auto& file = rw::fuzz::write_input("fuzz_state_dict", data, size);
    for (const bool strict : {true, false}) {
        try {
            rw::nn::load_state_dict(*layer, file, strict);
        } catch (const rw::nn::SafetensorsError&) {
        }
    }
    // Whatever was loaded has the layer's shapes: one step must run.
    (void)layer->forward(rw::Tensor<double>::zeros({1, 1, 3}));
    return 0;
}
