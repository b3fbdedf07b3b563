#pragma once
// Backpropagation: runs the recorded tape in reverse from given roots.

#include <vector>

#include "function.hpp"
#include "tensor.hpp"

namespace rw {

struct BackwardOptions {
    bool retain_graph = false;  // keep saved state so the same graph can be run backward again
    bool create_graph = false;  // record the backward itself, making gradients differentiable
};

// Accumulates d(sum_i <roots_i, seeds_i>)/d(leaf) into every leaf that requires a gradient.
// An undefined seed stands for ones (allowed only for a root with one element).
template <class T>
void backward(const std::vector<Tensor<T>>& roots, const std::vector<Tensor<T>>& seeds,
              BackwardOptions options = {});

// Returns d(sum_i <outputs_i, seeds_i>)/d(inputs_j) without touching any .grad (torch.autograd.grad).
// An input the outputs do not depend on gets an undefined tensor.
template <class T>
std::vector<Tensor<T>> grad(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& inputs,
                            const std::vector<Tensor<T>>& seeds = {}, BackwardOptions options = {});

extern template void backward(const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&, BackwardOptions);
extern template void backward(const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&, BackwardOptions);
extern template std::vector<Tensor<float>> grad(const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&,
                                                const std::vector<Tensor<float>>&, BackwardOptions);
extern template std::vector<Tensor<double>> grad(const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&,
                                                 const std::vector<Tensor<double>>&, BackwardOptions);

}  // namespace rw
