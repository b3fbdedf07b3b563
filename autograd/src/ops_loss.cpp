// Losses and dropout. They are built on the other ops, so their second derivatives come from
// those ops' backward rules.

#include <cmath>

#include <fmt/format.h>
#include <xtensor/xbuilder.hpp>

#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const std::vector<std::int64_t>& targets,
                        const std::optional<xt::xarray<Scalar<T>>>& mask) {
    if (logits.dim() != 2) throw_shape_error("cross_entropy", "logits must be 2-D [N, C]", logits.shape());
    const std::size_t rows = logits.size(0), classes = logits.size(1);
    if (rows == 0) throw_shape_error("cross_entropy", "needs at least one row of logits", logits.shape());
    if (targets.size() != rows)
        throw_shape_error("cross_entropy", fmt::format("{} targets for {} rows of logits", targets.size(), rows),
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
            throw_shape_error("cross_entropy", "the mask needs one weight per row of logits", to_shape(mask->shape()),
                              logits.shape());
        count = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            const T weight = (*mask)(r);
            if (!(weight >= T(0)) || !std::isfinite(weight))
                throw std::invalid_argument(
                    fmt::format("cross_entropy: mask weight {} of row {} is not a finite non-negative number", weight, r));
            weights[r] = weight;
            count += weight;
        }
        if (count == 0) throw std::invalid_argument("cross_entropy: the mask selects no rows (its weights sum to 0)");
    }

    const Tensor<T> log_probabilities = log_softmax(logits, 1);
    // The loss is <log_probabilities, picker>: -weight / count at each row's target, 0 elsewhere.
    // Masked rows are skipped rather than multiplied by 0, so padding logits that overflowed to
    // -inf cannot turn the loss into NaN.
    xt::xarray<T> picker = xt::zeros<T>({rows, classes});
    double loss = 0;
    for (std::size_t r = 0; r < rows; ++r) {
        if (weights[r] == T(0)) continue;
        const auto target = static_cast<std::size_t>(targets[r]);
        picker(r, target) = static_cast<T>(-weights[r] / count);
        loss += static_cast<double>(picker(r, target)) * static_cast<double>(log_probabilities.value()(r, target));
    }
    return record_op<T>("cross_entropy", {log_probabilities}, xt::xarray<T>(static_cast<T>(loss)),
                        [picker = std::move(picker)](const BackwardContext<T>& ctx) -> Gradients<T> {
                            return {mul_mask(broadcast_to(ctx.grad_output(0), ctx.input(0).shape()), picker)};
                        });
}

template <class T>
Tensor<T> mse_loss(const Tensor<T>& prediction, const Tensor<T>& target) {
    if (prediction.shape() != target.shape())
        throw_shape_error("mse_loss", "prediction and target shapes differ", prediction.shape(), target.shape());
    const Tensor<T> difference = sub(prediction, target);
    return mean(mul(difference, difference));
}

template <class T>
Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& generator) {
    if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument(fmt::format("dropout: p must be in [0, 1), got {}", p));
    if (!training || p == 0.0) return x;
    // Survivors are scaled at training time so that evaluation needs no rescaling.
    const T scale = static_cast<T>(1.0 / (1.0 - p));
    xt::xarray<T> mask = xt::xarray<T>::from_shape(x.value().shape());
    T* element = mask.data();
    for (std::size_t i = 0; i < mask.size(); ++i) element[i] = generator.uniform() < p ? T(0) : scale;
    return mul_mask(x, mask);
}

template Tensor<float> cross_entropy(const Tensor<float>&, const std::vector<std::int64_t>&,
                                     const std::optional<xt::xarray<float>>&);
template Tensor<double> cross_entropy(const Tensor<double>&, const std::vector<std::int64_t>&,
                                      const std::optional<xt::xarray<double>>&);
template Tensor<float> mse_loss(const Tensor<float>&, const Tensor<float>&);
template Tensor<double> mse_loss(const Tensor<double>&, const Tensor<double>&);
template Tensor<float> dropout(const Tensor<float>&, double, bool, Generator&);
template Tensor<double> dropout(const Tensor<double>&, double, bool, Generator&);

}  // namespace rw
