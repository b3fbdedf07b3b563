#pragma once
// Parameter constraints: projections an optimizer applies to a parameter's value after each
// update (Optimizer::constrain, optim.hpp), as Keras' kernel_constraint or the hand-written
// `p.data.clamp_()` after optimizer.step() in PyTorch code. A projection changes the value in
// place and is never recorded: the gradient is that of the unconstrained model.

#include <functional>

#include <xtensor/xarray.hpp>

namespace rw::nn {

template <class T>
using Projection = std::function<void(xt::xarray<T>& value)>;

namespace constraints {

// Every element into [low, high] (IndRNN's |u| <= 2^(1/T): clamp(-bound, bound)).
template <class T>
Projection<T> clamp(double low, double high);
// Every element >= 0.
template <class T>
Projection<T> non_negative();
// Each sub-tensor along dim 0 (a weight's rows; an element of a vector) rescaled to L2 norm
// max_norm when its norm exceeds it, as torch.renorm(p=2, dim=0, maxnorm) (which divides by
// norm + 1e-7) and Keras' MaxNorm.
template <class T>
Projection<T> max_norm(double max_norm);

}  // namespace constraints

}  // namespace rw::nn
