#pragma once
// What every fuzz target shares: the fuzzer's bytes as a file (the readers under test take
// paths, and a file is what a user hands them), and the one model the model-loading targets use.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <rewind/nn/layers/recurrent.hpp>

namespace rw::fuzz {

// A file in the temporary directory that holds the current input; one per process, so parallel
// fuzzing jobs (-jobs=N) do not share it.
inline const std::filesystem::path& input_file(const char* target) {
    static const std::filesystem::path path =
        std::filesystem::temp_directory_path() / (std::string(target) + "." + std::to_string(::getpid()) + ".safetensors");
    return path;
}

inline const std::filesystem::path& write_input(const char* target, const std::uint8_t* data, std::size_t size) {
    const auto& path = input_file(target);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                   static_cast<std::streamsize>(size));
    return path;
}

// The layer of tests/fixtures/lstm_l1_f64 (LSTM, I = 3, H = 5, one layer), whose files seed the corpora.
inline std::shared_ptr<nn::Recurrent<double>> fixture_layer() {
    return nn::make_recurrent<double>("lstm", {.input_size = 3, .hidden_size = 5});
}

}  // namespace rw::fuzz
