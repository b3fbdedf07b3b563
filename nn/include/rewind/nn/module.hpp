#pragma once
// Modules own named parameters and child modules, like torch.nn.Module.

#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <rewind/autograd/tensor.hpp>

namespace rw::nn {

template <class T>
using NamedTensors = std::vector<std::pair<std::string, Tensor<T>>>;

template <class T>
class Module {
public:
    virtual ~Module() = default;

    // Own parameters in registration order, then each child's as "child.name": a stable order
    // that state dicts, optimizers and checkpoints rely on.
    NamedTensors<T> named_parameters() const;
    std::vector<Tensor<T>> parameters() const;
    // Looks a parameter up by its full name; throws std::out_of_range naming it when absent.
    Tensor<T> parameter(const std::string& name) const;

    void train(bool training = true);
    void eval() { train(false); }
    bool is_training() const { return training_; }
    void zero_grad();

    // Makes `child` part of this module: its parameters appear as "name.<parameter>", and
    // train()/eval() reach it. Public, as in torch, so a few modules can be combined without a
    // subclass.
    template <class M>
    std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> child) {
        children_.emplace_back(std::move(name), child);
        return child;
    }

protected:
    // Marks the tensor as requiring a gradient and returns it (the same handle).
    Tensor<T> register_parameter(std::string name, Tensor<T> value);

private:
    NamedTensors<T> parameters_;
    std::unordered_set<std::string> parameter_names_;  // the names in parameters_: registration is O(1) per name
    std::vector<std::pair<std::string, std::shared_ptr<Module<T>>>> children_;
    bool training_ = true;
};

extern template class Module<float>;
extern template class Module<double>;

}  // namespace rw::nn
