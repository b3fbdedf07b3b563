#pragma once
// A module's parameters as a state dict (PyTorch names), saved to and loaded from safetensors.

#include <filesystem>
#include <string>

#include "rewind/nn/module.hpp"
#include "rewind/nn/io/safetensors.hpp"

namespace rw::nn {

template <class T>
TensorMap state_dict(const Module<T>& module);

// Saves atomically: the previous file stays intact if anything fails.
template <class T>
void save_state_dict(const Module<T>& module, const std::filesystem::path& file);

// Checks every key, shape and dtype before changing anything, so a failed load leaves the
// module exactly as it was. F32 and F64 entries are converted to the module's type, like
// torch's load_state_dict. strict = false allows (and ignores) unexpected keys; missing keys
// are always an error. `source` names the file in error messages.
template <class T>
void load_state_dict(Module<T>& module, const TensorMap& tensors, const std::string& source, bool strict = true);
template <class T>
void load_state_dict(Module<T>& module, const std::filesystem::path& file, bool strict = true);

}  // namespace rw::nn
