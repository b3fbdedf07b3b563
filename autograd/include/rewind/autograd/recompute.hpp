#pragma once
// Recomputation (gradient checkpointing, torch.utils.checkpoint): trade compute for memory.
//
// checkpoint(name, fn, inputs, parameters) runs fn(inputs) with recording off and records one op
// in its place, so none of fn's intermediate values stay alive. Its backward runs fn again with
// recording on, from detached copies of the inputs, and differentiates that graph. fn must give
// the same values both times (no fresh random numbers, no state changed between the calls).
//
// `parameters` are the leaf tensors fn reads directly rather than through `inputs` (a module's
// weights): listed, they get their gradients through the op like the inputs do. A parameter that
// is not a leaf is refused, since the rerun would differentiate through the graph that made it.

#include <functional>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace rw {

template <class T>
using CheckpointFn = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>& inputs)>;

template <class T>
std::vector<Tensor<T>> checkpoint(const std::string& name, const CheckpointFn<T>& fn, const std::vector<Tensor<T>>& inputs,
                                  const std::vector<Tensor<T>>& parameters = {});

extern template std::vector<Tensor<float>> checkpoint(const std::string&, const CheckpointFn<float>&,
                                                      const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&);
extern template std::vector<Tensor<double>> checkpoint(const std::string&, const CheckpointFn<double>&,
                                                       const std::vector<Tensor<double>>&,
                                                       const std::vector<Tensor<double>>&);

}  // namespace rw
