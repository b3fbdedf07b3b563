#pragma once
// The differentiable ops. Each is defined, forward and backward side by side, in one of
// src/ops_*.cpp and instantiated there for float and double. docs/derivatives.md lists every
// backward formula in one table.

#include <concepts>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "function.hpp"
#include "random.hpp"
#include "tensor.hpp"

namespace rw {

template <class T>
using Scalar = std::type_identity_t<T>;  // keeps `x * 2.0` working for Tensor<float>

// ---- element-wise, with numpy broadcasting (ops_elementwise.cpp) ----
template <class T> Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> neg(const Tensor<T>& a);
template <class T> Tensor<T> add_scalar(const Tensor<T>& a, Scalar<T> b);
template <class T> Tensor<T> mul_scalar(const Tensor<T>& a, Scalar<T> b);
template <class T> Tensor<T> tanh(const Tensor<T>& x);
template <class T> Tensor<T> sigmoid(const Tensor<T>& x);
template <class T> Tensor<T> relu(const Tensor<T>& x);
template <class T> Tensor<T> exp(const Tensor<T>& x);
template <class T> Tensor<T> log(const Tensor<T>& x);
template <class T> Tensor<T> sqrt(const Tensor<T>& x);
template <class T> Tensor<T> pow(const Tensor<T>& x, Scalar<T> exponent);
template <class T> Tensor<T> clamp(const Tensor<T>& x, Scalar<T> low, Scalar<T> high);
// g * (1 - y^2) and g * y * (1 - y): the backward of tanh and sigmoid as one pass each,
// themselves differentiable so that second derivatives work.
template <class T> Tensor<T> tanh_backward(const Tensor<T>& grad, const Tensor<T>& y);
template <class T> Tensor<T> sigmoid_backward(const Tensor<T>& grad, const Tensor<T>& y);
// a * mask with a constant mask (no gradient to the mask): relu', dropout, padding.
template <class T> Tensor<T> mul_mask(const Tensor<T>& a, const xt::xarray<T>& mask);

// ---- more element-wise ops for custom cells (ops_nonlinear.cpp), PyTorch's semantics ----
// 1 / sqrt(x) (torch.rsqrt).
template <class T> Tensor<T> rsqrt(const Tensor<T>& x);
// |x|; its gradient at 0 is 0, as torch.abs's.
template <class T> Tensor<T> abs(const Tensor<T>& x);
// Element-wise larger/smaller of a and b, broadcasting; NaN propagates; on ties each input gets
// half the gradient (torch.maximum / torch.minimum).
template <class T> Tensor<T> maximum(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> minimum(const Tensor<T>& a, const Tensor<T>& b);
// a where condition holds, else b; the three broadcast together (torch.where). The condition
// takes no gradient. Call it as rw::where: xt::where is found too, by argument-dependent lookup.
template <class T> Tensor<T> where(const xt::xarray<bool>& condition, const Tensor<T>& a, const Tensor<T>& b);
// log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch.nn.functional.softplus).
template <class T> Tensor<T> softplus(const Tensor<T>& x, Scalar<T> beta = 1, Scalar<T> threshold = 20);
// log(sigmoid(x)), computed as min(x, 0) - log1p(exp(-|x|)) so it stays finite (F.logsigmoid).
template <class T> Tensor<T> log_sigmoid(const Tensor<T>& x);

template <class T> Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a) { return neg(a); }
template <class T> Tensor<T> operator+(const Tensor<T>& a, Scalar<T> b) { return add_scalar(a, b); }
template <class T> Tensor<T> operator+(Scalar<T> a, const Tensor<T>& b) { return add_scalar(b, a); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, Scalar<T> b) { return add_scalar(a, -b); }
template <class T> Tensor<T> operator-(Scalar<T> a, const Tensor<T>& b) { return add_scalar(neg(b), a); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, Scalar<T> b) { return mul_scalar(a, b); }
template <class T> Tensor<T> operator*(Scalar<T> a, const Tensor<T>& b) { return mul_scalar(b, a); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, Scalar<T> b) { return mul_scalar(a, Scalar<T>(1) / b); }

// ---- shapes and products (ops_shape.cpp) ----
// [M, K] x [K, N] -> [M, N] and [B, M, K] x [K, N] -> [B, M, N], through the GEMM layer.
template <class T> Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b);
// Matrix product with either operand transposed, without materialising the transpose. An
// operand of more than two axes is the matrix [product of the leading axes, last axis]; the
// result keeps the leading axes of an untransposed `a` (like torch.nn.functional.linear:
// gemm(x [T, B, I], w [O, I], false, true) is [T, B, O]).
template <class T> Tensor<T> gemm(const Tensor<T>& a, const Tensor<T>& b, bool transpose_a, bool transpose_b);
template <class T> Tensor<T> transpose(const Tensor<T>& x);  // 2-D
template <class T> Tensor<T> permute(const Tensor<T>& x, const std::vector<std::size_t>& axes);
template <class T> Tensor<T> reshape(const Tensor<T>& x, const Shape& shape);
// Removes axis `axis`, which must have extent 1 (torch.squeeze(x, dim)); unsqueeze inserts one
// at position `axis` in 0..dim (torch.unsqueeze).
template <class T> Tensor<T> squeeze(const Tensor<T>& x, std::size_t axis);
template <class T> Tensor<T> unsqueeze(const Tensor<T>& x, std::size_t axis);
// Elements [begin, end) along axis.
template <class T> Tensor<T> slice(const Tensor<T>& x, std::size_t axis, std::size_t begin, std::size_t end);
template <class T> Tensor<T> concat(const std::vector<Tensor<T>>& parts, std::size_t axis);
template <class T> Tensor<T> stack(const std::vector<Tensor<T>>& parts, std::size_t axis);
// The inverse of stack (torch.unbind): one tensor per position of `axis`, that axis removed; one
// node whose backward is a single stack, so taking every step of a sequence costs O(size) in
// backward rather than a zero-padded full-size gradient per step as with slice.
template <class T> std::vector<Tensor<T>> unstack(const Tensor<T>& x, std::size_t axis);
template <class T> std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<std::size_t>& sizes, std::size_t axis);
template <class T> std::vector<Tensor<T>> chunk(const Tensor<T>& x, std::size_t chunks, std::size_t axis);
// Rows of x picked by index (an embedding lookup); repeated indices accumulate in backward.
template <class T> Tensor<T> index_select(const Tensor<T>& x, std::size_t axis, const std::vector<std::int64_t>& indices);
template <class T> Tensor<T> broadcast_to(const Tensor<T>& x, const Shape& shape);
// Sums the broadcast axes away so the result has `shape`: the backward of broadcasting.
template <class T> Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape);

// ---- reductions (ops_reduce.cpp) ----
template <class T> Tensor<T> sum(const Tensor<T>& x);
template <class T> Tensor<T> sum(const Tensor<T>& x, const std::vector<std::size_t>& axes, bool keepdims = false);
template <class T> Tensor<T> mean(const Tensor<T>& x);
template <class T> Tensor<T> mean(const Tensor<T>& x, const std::vector<std::size_t>& axes, bool keepdims = false);
// ---- normalisation (ops_norm.cpp) ----
// Variance over `axes` (torch.var(x, dim, unbiased, keepdim)): the sum of squared deviations
// from the mean divided by N - 1 when unbiased (PyTorch's default; NaN when N = 1, as PyTorch),
// else by N. Axes must be distinct; no axes (the default) means all of them, as dim=None.
template <class T>
Tensor<T> var(const Tensor<T>& x, const std::vector<std::size_t>& axes = {}, bool unbiased = true, bool keepdims = false);
// torch.nn.functional.layer_norm: normalises over the trailing axes given by normalized_shape
// (which must equal x's last axes), y = (x - mean) / sqrt(var_biased + eps) * weight + bias;
// weight and bias (shape normalized_shape) are optional: pass undefined tensors for none.
template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const Shape& normalized_shape, const Tensor<T>& weight = Tensor<T>(),
                     const Tensor<T>& bias = Tensor<T>(), double eps = 1e-5);

// Stable for large logits: the maximum is subtracted first.
template <class T> Tensor<T> softmax(const Tensor<T>& x, std::size_t axis);
template <class T> Tensor<T> log_softmax(const Tensor<T>& x, std::size_t axis);
// The index of the largest element along `axis` (the first on ties), that axis removed: logits
// [B, C] -> [B] tokens. Not differentiable, so it returns indices rather than a tensor.
template <class T> xt::xarray<std::int64_t> argmax(const Tensor<T>& x, std::size_t axis);

// ---- losses and dropout (ops_loss.cpp) ----
// How a loss reduces its per-element terms, as PyTorch's `reduction`: their mean (weighted by
// the mask where there is one), their sum, or none (the terms themselves).
enum class Reduction { mean, sum, none };

// -log softmax(logits)[target] per row; logits [N, C], targets [N] in [0, C). mask [N] of
// non-negative weights: row r counts weight_r times, the mean is over the weights' sum, and
// rows of weight 0 are skipped (their targets still range-checked). none: [N], row r's loss
// times its weight.
template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const std::vector<std::int64_t>& targets,
                        const std::optional<xt::xarray<Scalar<T>>>& mask = std::nullopt,
                        Reduction reduction = Reduction::mean);
// Probability (soft) targets [N, C], torch.nn.functional.cross_entropy with a float target:
// -sum_c p_rc log softmax(logits)_rc per row; the mean is over the N rows. Differentiable in
// both arguments. (Probabilities is deduced, never converted to, so that a braced list of class
// indices, cross_entropy(logits, {2, 0}), still means the overload above.)
template <class T, std::same_as<Tensor<T>> Probabilities>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Probabilities& target_probabilities,
                        Reduction reduction = Reduction::mean);
// (prediction - target)^2 per element; none keeps the shape.
template <class T>
Tensor<T> mse_loss(const Tensor<T>& prediction, const Tensor<T>& target, Reduction reduction = Reduction::mean);
// Inverted dropout: zeroes with probability p and scales survivors by 1/(1-p); identity when !training.
template <class T> Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& generator);

}  // namespace rw
