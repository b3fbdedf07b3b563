#pragma once
// Gradient clipping over all parameters at once, like torch.nn.utils.clip_grad_norm_ /
// clip_grad_value_. Parameters without a gradient are ignored.

#include <vector>

#include "rewind/nn/module.hpp"

namespace rw::nn {

// The global L2 norm of all gradients (as if concatenated into one vector), accumulated in
// double. When max_norm / (norm + 1e-6) < 1 every gradient is scaled by that factor, PyTorch's
// rule. Returns the norm before clipping.
//
// A NaN or Inf norm leaves the gradients untouched (scaling would spread the NaN to every
// gradient) and is returned as it is, so the caller can skip the step; with
// error_if_nonfinite it throws NonFiniteError (optim.hpp) naming the first parameter whose
// gradient is not finite.
template <class T>
double clip_grad_norm(const NamedTensors<T>& parameters, double max_norm, bool error_if_nonfinite = false);
template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& parameters, double max_norm, bool error_if_nonfinite = false);

// Clamps every gradient element to [-clip_value, clip_value]; NaN stays NaN (the optimizer
// then refuses the step).
template <class T>
void clip_grad_value(const NamedTensors<T>& parameters, double clip_value);
template <class T>
void clip_grad_value(const std::vector<Tensor<T>>& parameters, double clip_value);

}  // namespace rw::nn
