#pragma once

// Reading and writing the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header describing each tensor, then the raw
// little-endian row-major data of all tensors back to back.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <xtensor/xarray.hpp>

namespace rw::nn {

// The element types the format can carry here: F32, F64 and I64.
using StoredArray = std::variant<xt::xarray<float>, xt::xarray<double>, xt::xarray<std::int64_t>>;

// Ordered by name, which is also the order tensors are laid out on disk.
using TensorMap = std::map<std::string, StoredArray>;

// Every failure to save or load, with the file path, the tensor name where
// one applies, and what is wrong.
struct SafetensorsError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Writes atomically: the data goes to a temporary file in the same directory,
// which is synced and then renamed over `file`, so `file` is either the old
// content or the complete new one. Replacing a file keeps its permission bits
// (and, where allowed, its owner and group). When `file` is a symbolic link the
// save writes through it: the link's final target is replaced (in the target's
// directory) and the link itself is left as it is. A save killed before its
// rename leaves a temporary file ".<name>.tmp.<pid>.<n>" beside the target; the
// next save of the same target removes those of processes that no longer exist. A tensor may not be named "__metadata__"
// and names and metadata must be valid UTF-8.
void save_safetensors(const std::filesystem::path& file, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Validates the whole header against the file before allocating any tensor,
// so a corrupt or hostile file is rejected rather than trusted. When
// `metadata` is given it receives the "__metadata__" entries (empty if none).
TensorMap load_safetensors(const std::filesystem::path& file, std::map<std::string, std::string>* metadata = nullptr);

// "F32", "F64" or "I64".
std::string dtype_name(const StoredArray& array);

std::vector<std::size_t> shape_of(const StoredArray& array);

// The array stored under `name` with element type T (float: F32, double: F64, std::int64_t:
// I64), instead of a raw std::get on the variant: a missing name or another dtype throws
// SafetensorsError naming the tensor ("tensor 'x' is F32, expected F64").
template <class T>
const xt::xarray<T>& get_array(const TensorMap& tensors, const std::string& name);

extern template const xt::xarray<float>& get_array(const TensorMap&, const std::string&);
extern template const xt::xarray<double>& get_array(const TensorMap&, const std::string&);
extern template const xt::xarray<std::int64_t>& get_array(const TensorMap&, const std::string&);

}  // namespace rw::nn
