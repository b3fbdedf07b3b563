// Losses and dropout. They are built on the other ops, so their second derivatives come from
// those ops' backward rules.

#include <cmath>
#include <memory>

#include <fmt/format.h>
#include <xtensor/xbuilder.hpp>

#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

namespace {

template <class T>
Tensor<T> reduce(const Tensor<T>& terms, Reduction reduction) {
    switch (reduction) {
        case Reduction::mean: return mean(terms);
        case Reduction::sum: return sum(terms);
        case Reduction::none: break;
    }
    return terms;
}

void check_logits(const Shape& logits) {
    if (logits.size() != 2) throw_wrong_shape("cross_entropy", "logits", "[N, C] (2-D)", logits);
    if (logits[0] == 0) throw_shape_error("cross_entropy", "needs at least one row of logits", logits);
}

}  // namespace

template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const std::vector<std::int64_t>& targets,
                        const std::optional<xt::xarray<Scalar<T>>>& mask, Reduction reduction) {
    check_logits(logits.shape());
    const std::size_t rows = logits.size(0), classes = logits.size(1);
    if (targets.size() != rows)
        throw_shape_error("cross_entropy", fmt::format("expected {} targets (one per row of logits), got {}", rows, targets.size()),
                          logits.shape());
    for (std::size_t r = 0; r < rows; ++r)
        if (targets[r] < 0 || static_cast<std::size_t>(targets[r]) >= classes)
            throw_shape_error("cross_entropy",
                              fmt::format("target {} of row {} is outside the classes [0, {})", targets[r], r, classes),
                              logits.shape());

    std::vector<T> weights(rows, T(1));
    double count = static_cast<double>(rows);
    if (mask) {
        if (mask->dimension() != 1 || mask->shape()[0] != rows)
            throw_wrong_shape("cross_entropy", "the mask (one weight per row of logits)", Shape{rows},
                              to_shape(mask->shape()));
        count = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            const T weight = (*mask)(r);
            if (!(weight >= T(0)) || !std::isfinite(weight))
                throw std::invalid_argument(
                    fmt::format("cross_entropy: mask weight {} of row {} is not a finite non-negative number", weight, r));
            weights[r] = weight;
            count += weight;
        }
        if (count == 0 && reduction == Reduction::mean)
            throw std::invalid_argument("cross_entropy: the mask selects no rows (its weights sum to 0)");
    }
    if (reduction != Reduction::mean) count = 1;

    const Tensor<T> log_probabilities = log_softmax(logits, 1);
    // The loss is <log_probabilities, picker> (row by row for Reduction::none): -weight / count
    // at each row's target, 0 elsewhere. Masked rows are skipped rather than multiplied by 0, so
    // padding logits that overflowed to -inf cannot turn the loss into NaN.
    xt::xarray<T> picker = xt::zeros<T>({rows, classes});
    xt::xarray<T> row_losses = xt::zeros<T>({rows});
    double loss = 0;
    for (std::size_t r = 0; r < rows; ++r) {
        if (weights[r] == T(0)) continue;
        const auto target = static_cast<std::size_t>(targets[r]);
        picker(r, target) = static_cast<T>(-weights[r] / count);
        const double term = static_cast<double>(picker(r, target)) * static_cast<double>(log_probabilities.value()(r, target));
        row_losses(r) = static_cast<T>(term);
        loss += term;
    }
    const bool per_row = reduction == Reduction::none;
    auto shared = std::make_shared<const xt::xarray<T>>(std::move(picker));  // for both rules
    return record_op<T>("cross_entropy", {log_probabilities}, per_row ? std::move(row_losses) : xt::xarray<T>(static_cast<T>(loss)),
                        [shared, per_row, rows](const BackwardContext<T>& ctx) -> Gradients<T> {
                            const Tensor<T> g = per_row ? reshape(ctx.grad_output(0), {rows, 1}) : ctx.grad_output(0);
                            return {mul_mask(broadcast_to(g, ctx.input(0).shape()), *shared)};
                        },
                        [shared, per_row](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
                            // linear in L: dloss = Σ_c P dL (per row for none)
                            const Tensor<T> picked = mul_mask(ctx.tangent(0), *shared);
                            return {per_row ? sum(picked, {1}) : sum(picked)};
                        });
}

template <class T, std::same_as<Tensor<T>> Probabilities>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Probabilities& target_probabilities, Reduction reduction) {
    check_logits(logits.shape());
    if (target_probabilities.shape() != logits.shape())
        throw_wrong_shape("cross_entropy", "the target probabilities (one row per row of logits)", logits.shape(),
                          target_probabilities.shape());
    // The mean is over rows, as torch's: each row's loss is already a sum over the classes.
    return reduce(neg(sum(mul(target_probabilities, log_softmax(logits, 1)), {1})), reduction);
}

template <class T>
Tensor<T> mse_loss(const Tensor<T>& prediction, const Tensor<T>& target, Reduction reduction) {
    if (prediction.shape() != target.shape())
        throw_wrong_shape("mse_loss", "the target (the prediction's shape)", prediction.shape(), target.shape());
    const Tensor<T> difference = sub(prediction, target);
    return reduce(mul(difference, difference), reduction);
}

template <class T>
Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& generator) {
    if (!(p >= 0.0 && p <= 1.0))
        throw std::invalid_argument(fmt::format("dropout: p must be a probability: expected a value in [0, 1], got {}", p));
    if (!training || p == 0.0) return x;
    // Everything dropped (torch.nn.functional.dropout with p = 1): zeros, and no random draws.
    if (p == 1.0) return mul_mask(x, xt::xarray<T>(xt::zeros<T>(x.value().shape())));
    // Survivors are scaled at training time so that evaluation needs no rescaling.
    const T scale = static_cast<T>(1.0 / (1.0 - p));
    xt::xarray<T> mask = xt::xarray<T>::from_shape(x.value().shape());
    T* element = mask.data();
    for (std::size_t i = 0; i < mask.size(); ++i) element[i] = generator.uniform() < p ? T(0) : scale;
    return mul_mask(x, mask);
}

#define REWIND_LOSS_OPS(T)                                                                                      \
    template Tensor<T> cross_entropy(const Tensor<T>&, const std::vector<std::int64_t>&,                        \
                                     const std::optional<xt::xarray<T>>&, Reduction);                           \
    template Tensor<T> cross_entropy<T, Tensor<T>>(const Tensor<T>&, const Tensor<T>&, Reduction);              \
    template Tensor<T> mse_loss(const Tensor<T>&, const Tensor<T>&, Reduction);                                 \
    template Tensor<T> dropout(const Tensor<T>&, double, bool, Generator&);
REWIND_LOSS_OPS(float)
REWIND_LOSS_OPS(double)

}  // namespace rw
