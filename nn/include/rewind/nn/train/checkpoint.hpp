#pragma once
// A training checkpoint in ONE safetensors file: the model's parameters, the optimizer's state
// (learning rate, hyperparameters, step counts, moment buffers), the scheduler's counters and
// the state of every random generator that affects training (dropout masks, data shuffling),
// so that resuming continues bit for bit as if training had never stopped.
//
// Layout: tensors "model.<parameter>" and "optim.<parameter>.<buffer|step>"; metadata
// "format", "optim.<scalar>", "scheduler.<scalar>", "generator.<name>" (Generator::state())
// and "user.<key>" for the caller's own entries (epoch, data position, ...).
//
// Saving is atomic (save_safetensors). Loading is strict and all-or-nothing: the file must hold
// exactly the parts this Checkpoint names (no missing, no unexpected entries), and everything is
// validated before the model, optimizer, scheduler or any generator is touched.

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <rewind/autograd/random.hpp>

#include "rewind/nn/module.hpp"
#include "rewind/nn/train/optim.hpp"
#include "rewind/nn/train/schedule.hpp"

namespace rw::nn {

template <class T>
class Checkpoint {
public:
    explicit Checkpoint(Module<T>& model) : model_(&model) {}
    Checkpoint& with(Optimizer<T>& optimizer) { optimizer_ = &optimizer; return *this; }
    Checkpoint& with(Scheduler& scheduler) { scheduler_ = &scheduler; return *this; }
    // A generator under a name of letters, digits and '_', e.g. "lstm", "dropout", "data".
    Checkpoint& with(const std::string& name, Generator& generator);

    void save(const std::filesystem::path& file, const std::map<std::string, std::string>& user = {}) const;
    // Returns the "user." entries (without the prefix). Throws SafetensorsError naming the file
    // and the entry on any problem, leaving everything unchanged.
    std::map<std::string, std::string> load(const std::filesystem::path& file);

private:
    Module<T>* model_;
    Optimizer<T>* optimizer_ = nullptr;
    Scheduler* scheduler_ = nullptr;
    std::vector<std::pair<std::string, Generator*>> generators_;
};

extern template class Checkpoint<float>;
extern template class Checkpoint<double>;

}  // namespace rw::nn
