#include "rewind/nn/module.hpp"

#include <stdexcept>

namespace rw::nn {

template <class T>
NamedTensors<T> Module<T>::named_parameters() const {
    NamedTensors<T> all = parameters_;
    for (const auto& [prefix, child] : children_)
        for (auto& [name, tensor] : child->named_parameters()) all.emplace_back(prefix + "." + name, tensor);
    return all;
}

template <class T>
std::vector<Tensor<T>> Module<T>::parameters() const {
    std::vector<Tensor<T>> all;
    for (auto& named : named_parameters()) all.push_back(named.second);
    return all;
}

template <class T>
Tensor<T> Module<T>::parameter(const std::string& name) const {
    for (auto& [key, tensor] : named_parameters())
        if (key == name) return tensor;
    throw std::out_of_range("no parameter named '" + name + "'");
}

template <class T>
void Module<T>::train(bool training) {
    training_ = training;
    for (auto& child : children_) child.second->train(training);
}

template <class T>
void Module<T>::zero_grad() {
    for (auto& tensor : parameters()) tensor.zero_grad();
}

template <class T>
Tensor<T> Module<T>::register_parameter(std::string name, Tensor<T> value) {
    if (parameter_names_.contains(name)) throw std::logic_error("parameter '" + name + "' registered twice");
    value.set_requires_grad(true);
    parameter_names_.insert(name);
    parameters_.emplace_back(std::move(name), value);
    return value;
}

template class Module<float>;
template class Module<double>;

}  // namespace rw::nn
