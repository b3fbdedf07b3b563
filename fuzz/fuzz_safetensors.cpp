// The safetensors reader on arbitrary bytes: the 8-byte length, the JSON header (types, shapes,
// offsets, duplicate keys, metadata) and the data section. A file it cannot read must end in
// SafetensorsError; anything else (a crash, a sanitizer report, another exception) is a finding.

#include <rewind/nn/io/safetensors.hpp>

#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto& file = rw::fuzz::write_input("fuzz_safetensors", data, size);
    try {
        std::map<std::string, std::string> metadata;
        const rw::nn::TensorMap tensors = rw::nn::load_safetensors(file, &metadata);
        for (const auto& [name, array] : tensors) (void)rw::nn::shape_of(array);
    } catch (const rw::nn::SafetensorsError&) {
    }
    return 0;
}
