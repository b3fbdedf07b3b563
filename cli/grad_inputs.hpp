#pragma once
// `rewind grad`'s request and its input files, checked completely before any computation so
// that every mistake is reported by name and OUT is never touched.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <rewind/nn/io/safetensors.hpp>

#include "commands.hpp"

namespace rw::cli {

struct GradRequest {
    LayerConfig layer;
    std::filesystem::path state_file, inputs_file, out_file;
    std::string path = "generic";
    int threads = 1;
    bool check_finite = false;  // NaN or Inf in INPUTS or STATE: an error instead of a warning
};

struct GradData {
    nn::TensorMap inputs;  // x, grad_output and the optional tensors, by INPUTS' names
    nn::TensorMap state;   // the parameters, by PyTorch's names
    std::string dtype;     // "F32" or "F64", shared by every floating-point tensor
    std::optional<std::vector<std::int64_t>> lengths;

    bool has(const std::string& name) const { return inputs.contains(name); }
};

// Loads STATE and INPUTS and checks names, dtypes, shapes and lengths against the layer
// configuration, and that STATE holds every layer and direction asked for (the parameters' exact
// names and shapes are left to load_state_dict). Tensors holding NaN or Inf are named: a warning
// on stderr, or a CommandError with check_finite.
GradData load_grad_data(const GradRequest& request);

}  // namespace rw::cli
