#include "rewind/nn/train/checkpoint.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "rewind/nn/io/safetensors.hpp"
#include "rewind/nn/io/state_dict.hpp"

namespace rw::nn {

namespace {

constexpr const char* format_tag = "rewind.checkpoint/1";

// The entries of `map` under "prefix." with the prefix removed, moved out of `map`.
template <class Map>
Map take_prefixed(Map& map, const std::string& prefix) {
    Map taken;
    for (auto it = map.lower_bound(prefix + "."); it != map.end() && it->first.rfind(prefix + ".", 0) == 0;) {
        taken.emplace(it->first.substr(prefix.size() + 1), std::move(it->second));
        it = map.erase(it);
    }
    return taken;
}

}  // namespace

template <class T>
Checkpoint<T>& Checkpoint<T>::with(const std::string& name, Generator& generator) {
    const bool valid = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
    if (!valid) throw std::invalid_argument("checkpoint: generator name '" + name + "' must be letters, digits or '_'");
    for (const auto& entry : generators_)
        if (entry.first == name) throw std::invalid_argument("checkpoint: generator '" + name + "' given twice");
    generators_.emplace_back(name, &generator);
    return *this;
}

template <class T>
void Checkpoint<T>::save(const std::filesystem::path& file, const std::map<std::string, std::string>& user) const {
    TensorMap tensors;
    std::map<std::string, std::string> metadata{{"format", format_tag}};
    for (auto& [name, value] : state_dict(*model_)) tensors.emplace("model." + name, std::move(value));
    if (optimizer_) {
        OptimizerState state = optimizer_->state();
        for (auto& [name, value] : state.tensors) tensors.emplace("optim." + name, std::move(value));
        for (auto& [key, value] : state.scalars) metadata.emplace("optim." + key, value);
    }
    if (scheduler_)
        for (auto& [key, value] : scheduler_->state()) metadata.emplace("scheduler." + key, value);
    for (const auto& [name, generator] : generators_) metadata.emplace("generator." + name, generator->state());
    for (const auto& [key, value] : user) metadata.emplace("user." + key, value);
    save_safetensors(file, tensors, metadata);
}

template <class T>
std::map<std::string, std::string> Checkpoint<T>::load(const std::filesystem::path& file) {
    const std::string source = file.string();
    auto reject = [&](const std::string& what) { throw SafetensorsError(fmt::format("{}: checkpoint: {}", source, what)); };
    std::map<std::string, std::string> metadata;
    TensorMap tensors = load_safetensors(file, &metadata);

    auto format = metadata.find("format");
    if (format == metadata.end() || format->second != format_tag)
        reject(fmt::format("not a rewind checkpoint (metadata 'format' is not '{}')", format_tag));
    metadata.erase(format);
    TensorMap model_tensors = take_prefixed(tensors, "model");
    OptimizerState optimizer_state{take_prefixed(tensors, "optim"), take_prefixed(metadata, "optim")};
    auto scheduler_state = take_prefixed(metadata, "scheduler");
    auto generator_states = take_prefixed(metadata, "generator");
    auto user = take_prefixed(metadata, "user");
    if (!tensors.empty()) reject(fmt::format("unexpected tensor '{}'", tensors.begin()->first));
    if (!metadata.empty()) reject(fmt::format("unexpected metadata '{}'", metadata.begin()->first));

    // Validate every part before changing any.
    const bool has_optimizer_state = !optimizer_state.tensors.empty() || !optimizer_state.scalars.empty();
    if (optimizer_) optimizer_->validate_state(optimizer_state, source);
    else if (has_optimizer_state) reject("the file holds optimizer state but no optimizer was given to load it into");
    if (scheduler_) scheduler_->validate_state(scheduler_state, source);
    else if (!scheduler_state.empty()) reject("the file holds scheduler state but no scheduler was given to load it into");
    std::vector<Generator> restored;
    for (const auto& [name, generator] : generators_) {
        auto found = generator_states.find(name);
        if (found == generator_states.end()) reject(fmt::format("generator '{}' is missing", name));
        restored.emplace_back();
        try {
            restored.back().set_state(found->second);
        } catch (const std::invalid_argument&) {
            reject(fmt::format("generator '{}' does not hold a generator state", name));
        }
        generator_states.erase(found);
    }
    if (!generator_states.empty()) reject(fmt::format("unexpected generator '{}'", generator_states.begin()->first));

    // The model's strict loader checks every key, shape and dtype before it writes; it is the
    // last step that can fail, so the others are applied only after it succeeded.
    load_state_dict(*model_, model_tensors, source + " (model)", true);
    if (optimizer_) optimizer_->load_state(optimizer_state, source);
    if (scheduler_) scheduler_->load_state(scheduler_state, source);
    for (std::size_t i = 0; i < generators_.size(); ++i) *generators_[i].second = restored[i];
    return user;
}

template class Checkpoint<float>;
template class Checkpoint<double>;

}  // namespace rw::nn
