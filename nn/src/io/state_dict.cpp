#include "rewind/nn/io/state_dict.hpp"

#include <set>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace rw::nn {

template <class T>
TensorMap state_dict(const Module<T>& module) {
    TensorMap tensors;
    for (const auto& [name, tensor] : module.named_parameters()) tensors.emplace(name, tensor.value());
    return tensors;
}

template <class T>
void save_state_dict(const Module<T>& module, const std::filesystem::path& file) {
    save_safetensors(file, state_dict(module));
}

namespace {

template <class T>
xt::xarray<T> converted(const StoredArray& stored, const std::string& source, const std::string& key) {
    if (const auto* f = std::get_if<xt::xarray<float>>(&stored)) return xt::xarray<T>(xt::cast<T>(*f));
    if (const auto* d = std::get_if<xt::xarray<double>>(&stored)) return xt::xarray<T>(xt::cast<T>(*d));
    throw SafetensorsError(fmt::format("{}: tensor '{}': dtype {} cannot hold a parameter (expected F32 or F64)", source,
                                       key, dtype_name(stored)));
}

}  // namespace

template <class T>
void load_state_dict(Module<T>& module, const TensorMap& tensors, const std::string& source, bool strict) {
    auto parameters = module.named_parameters();
    std::vector<xt::xarray<T>> values;
    values.reserve(parameters.size());
    for (const auto& [name, tensor] : parameters) {
        auto found = tensors.find(name);
        if (found == tensors.end()) throw SafetensorsError(fmt::format("{}: tensor '{}': missing", source, name));
        if (shape_of(found->second) != tensor.shape())
            throw SafetensorsError(fmt::format("{}: tensor '{}': shape [{}] in the file, the module has {}", source, name,
                                               fmt::join(shape_of(found->second), ", "), shape_string(tensor.shape())));
        values.push_back(converted<T>(found->second, source, name));
    }
    if (strict) {
        std::set<std::string_view> known;
        for (const auto& parameter : parameters) known.insert(parameter.first);
        for (const auto& [key, stored] : tensors)
            if (!known.contains(key))
                throw SafetensorsError(fmt::format("{}: tensor '{}': unexpected (the module has no such parameter)", source, key));
    }
    // Everything checked: only now touch the module.
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].second.mutable_value() = std::move(values[i]);
}

template <class T>
void load_state_dict(Module<T>& module, const std::filesystem::path& file, bool strict) {
    load_state_dict(module, load_safetensors(file), file.string(), strict);
}

template TensorMap state_dict(const Module<float>&);
template TensorMap state_dict(const Module<double>&);
template void save_state_dict(const Module<float>&, const std::filesystem::path&);
template void save_state_dict(const Module<double>&, const std::filesystem::path&);
template void load_state_dict(Module<float>&, const TensorMap&, const std::string&, bool);
template void load_state_dict(Module<double>&, const TensorMap&, const std::string&, bool);
template void load_state_dict(Module<float>&, const std::filesystem::path&, bool);
template void load_state_dict(Module<double>&, const std::filesystem::path&, bool);

}  // namespace rw::nn
