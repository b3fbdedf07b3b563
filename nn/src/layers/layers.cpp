#include "rewind/nn/layers/layers.hpp"

#include "rewind/nn/layers/cell_table.hpp"

#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/ops.hpp>

#include "rewind/nn/layers/cells.hpp"
#include "rewind/nn/layers/init.hpp"

namespace rw::nn {

// ---- Linear, Embedding, Dropout ----

template <class T>
Linear<T>::Linear(std::size_t in_features, std::size_t out_features, Generator& generator, bool bias) {
    if (in_features == 0 || out_features == 0)
        throw std::invalid_argument(fmt::format("Linear: in_features and out_features must be at least 1, got {} and {}",
                                                in_features, out_features));
    const double bound = 1.0 / std::sqrt(double(in_features));
    weight_ = this->register_parameter("weight", Tensor<T>(init::uniform<T>({out_features, in_features}, -bound, bound, generator)));
    if (bias) bias_ = this->register_parameter("bias", Tensor<T>(init::uniform<T>({out_features}, -bound, bound, generator)));
}

template <class T>
Tensor<T> Linear<T>::forward(const Tensor<T>& x) const {
    const std::size_t in = weight_.size(1), out = weight_.size(0);
    if (x.dim() == 0 || x.shape().back() != in)
        throw_shape_error("Linear", "the input's last axis must match weight [out, in]", x.shape(), weight_.shape());
    Shape shape = x.shape();
    const std::size_t rows = x.size() / in;
    Tensor<T> y = gemm(reshape(x, {rows, in}), weight_, false, true);
    if (bias_.defined()) y = add(y, bias_);
    shape.back() = out;
    return reshape(y, shape);
}

template <class T>
Embedding<T>::Embedding(std::size_t num_embeddings, std::size_t dim, Generator& generator) {
    if (num_embeddings == 0 || dim == 0)
        throw std::invalid_argument(fmt::format(
            "Embedding: num_embeddings and embedding_dim must be at least 1, got {} and {}", num_embeddings, dim));
    xt::xarray<T> weight = checked_array<T>("Embedding", {num_embeddings, dim});
    for (T& w : weight) w = T(generator.normal());
    weight_ = this->register_parameter("weight", Tensor<T>(std::move(weight)));
}

template <class T>
Tensor<T> Embedding<T>::forward(const xt::xarray<std::int64_t>& indices) const {
    const std::vector<std::int64_t> flat(indices.begin(), indices.end());
    Shape shape = to_shape(indices.shape());
    shape.push_back(weight_.size(1));
    return reshape(index_select(weight_, 0, flat), shape);
}

template <class T>
Tensor<T> Embedding<T>::forward(const std::vector<std::int64_t>& indices) const {
    return index_select(weight_, 0, indices);
}

template <class T>
Dropout<T>::Dropout(double p, std::uint64_t seed) : p_(p), generator_(seed) {
    if (!(p >= 0.0 && p <= 1.0))
        throw std::invalid_argument(fmt::format("Dropout: p must be a probability: expected a value in [0, 1], got {}", p));
}

template <class T>
Tensor<T> Dropout<T>::forward(const Tensor<T>& x) {
    return dropout(x, p_, this->is_training(), generator_);
}

// ---- losses ----

template <class T>
xt::xarray<T> length_mask(std::size_t steps, const std::vector<std::int64_t>& lengths) {
    xt::xarray<T> mask = xt::zeros<T>({steps, lengths.size()});
    for (std::size_t b = 0; b < lengths.size(); ++b) {
        if (lengths[b] < 0 || std::size_t(lengths[b]) > steps)
            throw std::invalid_argument(fmt::format("length_mask: length {} of sequence {} is outside 0..{}", lengths[b], b, steps));
        for (std::size_t t = 0; t < std::size_t(lengths[b]); ++t) mask(t, b) = T(1);
    }
    return mask;
}

template <class T>
Tensor<T> sequence_cross_entropy(const Tensor<T>& logits, const xt::xarray<std::int64_t>& targets,
                                 const std::optional<xt::xarray<std::type_identity_t<T>>>& mask, Reduction reduction) {
    if (logits.dim() != 3) throw_wrong_shape("sequence_cross_entropy", "logits", "[T, B, C]", logits.shape());
    const std::size_t steps = logits.size(0), batch = logits.size(1), classes = logits.size(2);
    const Shape positions{steps, batch};
    if (to_shape(targets.shape()) != positions)
        throw_wrong_shape("sequence_cross_entropy", "targets", positions, to_shape(targets.shape()));
    if (mask && to_shape(mask->shape()) != positions)
        throw_wrong_shape("sequence_cross_entropy", "the mask", positions, to_shape(mask->shape()));
    std::vector<std::int64_t> flat(targets.begin(), targets.end());
    std::optional<xt::xarray<T>> weights;
    if (mask) {
        weights = xt::xarray<T>(xt::flatten(*mask));
        // Masked rows are skipped by cross_entropy, but it range-checks every target: padding becomes 0.
        for (std::size_t r = 0; r < flat.size(); ++r)
            if ((*weights)(r) == T(0)) flat[r] = 0;
    }
    const Tensor<T> loss = cross_entropy(reshape(logits, {steps * batch, classes}), flat, weights, reduction);
    return reduction == Reduction::none ? reshape(loss, positions) : loss;
}

template <class T>
Tensor<T> sequence_cross_entropy(const Tensor<T>& logits, const xt::xarray<std::int64_t>& targets,
                                 const std::vector<std::int64_t>& lengths, Reduction reduction) {
    if (logits.dim() != 3) throw_wrong_shape("sequence_cross_entropy", "logits", "[T, B, C]", logits.shape());
    return sequence_cross_entropy(logits, targets, std::optional<xt::xarray<T>>(length_mask<T>(logits.size(0), lengths)),
                                  reduction);
}

template <class T>
Tensor<T> sequence_mse(const Tensor<T>& prediction, const Tensor<T>& target, const xt::xarray<T>& mask,
                       Reduction reduction) {
    if (prediction.dim() != 3) throw_wrong_shape("sequence_mse", "the prediction", "[T, B, F]", prediction.shape());
    if (target.shape() != prediction.shape())
        throw_wrong_shape("sequence_mse", "the target (the prediction's shape)", prediction.shape(), target.shape());
    const std::size_t steps = prediction.size(0), batch = prediction.size(1), features = prediction.size(2);
    if (to_shape(mask.shape()) != Shape{steps, batch})
        throw_wrong_shape("sequence_mse", "the mask", Shape{steps, batch}, to_shape(mask.shape()));
    const double count = double(xt::sum(mask)()) * double(features);
    if (reduction == Reduction::mean && !(count > 0)) throw std::invalid_argument("sequence_mse: the mask selects nothing");
    const xt::xarray<T> full = xt::broadcast(xt::view(mask, xt::all(), xt::all(), xt::newaxis()), prediction.shape());
    const Tensor<T> difference = sub(prediction, target);
    const Tensor<T> terms = mul_mask(mul(difference, difference), full);
    switch (reduction) {
        case Reduction::mean: return mul_scalar(sum(terms), T(1.0 / count));
        case Reduction::sum: return sum(terms);
        case Reduction::none: break;
    }
    return terms;
}

// ---- variational dropout ----

template <class T>
VariationalDropoutCell<T>::VariationalDropoutCell(std::shared_ptr<RecurrentCell<T>> inner, const VariationalDropout& p,
                                                  Generator& generator)
    : RecurrentCell<T>(inner->input_size(), inner->hidden_size()), inner_(std::move(inner)), p_(p), generator_(&generator) {
    for (double q : {p.input, p.hidden})
        if (!(q >= 0.0 && q < 1.0))
            throw std::invalid_argument(fmt::format("variational dropout: probabilities must be in [0, 1), got {}", q));
    // The same tensors under the same names, so the layer names them as for the bare cell.
    for (auto& [name, tensor] : inner_->named_parameters()) this->register_parameter(name, tensor);
}

template <class T>
bool VariationalDropoutCell<T>::active() const {
    const bool training = layer_ ? layer_->is_training() : this->is_training();
    return training && (p_.input > 0 || p_.hidden > 0);
}

namespace {

// One inverted-dropout mask [rows, width]: 0 with probability p, else 1 / (1 - p).
template <class T>
xt::xarray<T> draw_mask(std::size_t rows, std::size_t width, double p, Generator& generator) {
    const T scale = T(1.0 / (1.0 - p));
    xt::xarray<T> mask = xt::xarray<T>::from_shape({rows, width});
    for (T& m : mask) m = generator.uniform() < p ? T(0) : scale;
    return mask;
}

}  // namespace

template <class T>
Tensor<T> VariationalDropoutCell<T>::prepare_input(const Tensor<T>& input) const {
    input_mask_ = xt::xarray<T>::from_shape({0});  // size 0: no masks (`{}` would be a 0-d array of size 1)
    hidden_mask_ = xt::xarray<T>::from_shape({0});
    if (!active()) return inner_->prepare_input(input);
    const std::size_t batch = input.size(1);
    input_mask_ = draw_mask<T>(batch, this->input_size(), p_.input, *generator_);
    hidden_mask_ = draw_mask<T>(batch, this->hidden_size(), p_.hidden, *generator_);
    if (p_.input == 0) return inner_->prepare_input(input);
    const xt::xarray<T> every_step = xt::broadcast(input_mask_, input.shape());
    return inner_->prepare_input(mul_mask(input, every_step));
}

template <class T>
State<T> VariationalDropoutCell<T>::step(const Tensor<T>& x_t, const State<T>& state) const {
    if (hidden_mask_.size() == 0 || p_.hidden == 0) return inner_->step(x_t, state);
    State<T> masked = state;
    masked[0] = mul_mask(state[0], hidden_mask_);
    return inner_->step(x_t, masked);
}

template <class T>
std::shared_ptr<Recurrent<T>> make_variational_recurrent(const CellFactory<T>& factory, const RecurrentOptions& options,
                                                         const VariationalDropout& p) {
    auto created = std::make_shared<std::vector<VariationalDropoutCell<T>*>>();
    auto wrapped = [factory, p, created](std::size_t in, std::size_t hidden, Generator& generator) {
        auto cell = std::make_shared<VariationalDropoutCell<T>>(factory(in, hidden, generator), p, generator);
        created->push_back(cell.get());
        return std::shared_ptr<RecurrentCell<T>>(cell);
    };
    auto layer = std::make_shared<Recurrent<T>>(wrapped, options);
    // The layer owns the cells, so the back pointer lives exactly as long as they do.
    for (auto* cell : *created) cell->bind(*layer);
    return layer;
}

template <class T>
std::shared_ptr<Recurrent<T>> make_variational_recurrent(const std::string& cell, const RecurrentOptions& options,
                                                         const VariationalDropout& p) {
    return make_variational_recurrent<T>(cell_factory<T>(cell, options.init, options.cell_options()), options, p);
}

#define REWIND_LAYERS(T)                                                                                              \
    template class Linear<T>;                                                                                         \
    template class Embedding<T>;                                                                                      \
    template class Dropout<T>;                                                                                        \
    template class VariationalDropoutCell<T>;                                                                         \
    template xt::xarray<T> length_mask<T>(std::size_t, const std::vector<std::int64_t>&);                             \
    template Tensor<T> sequence_cross_entropy(const Tensor<T>&, const xt::xarray<std::int64_t>&,                     \
                                              const std::optional<xt::xarray<T>>&, Reduction);                        \
    template Tensor<T> sequence_cross_entropy(const Tensor<T>&, const xt::xarray<std::int64_t>&,                     \
                                              const std::vector<std::int64_t>&, Reduction);                           \
    template Tensor<T> sequence_mse(const Tensor<T>&, const Tensor<T>&, const xt::xarray<T>&, Reduction);            \
    template std::shared_ptr<Recurrent<T>> make_variational_recurrent(const CellFactory<T>&, const RecurrentOptions&, \
                                                                      const VariationalDropout&);                     \
    template std::shared_ptr<Recurrent<T>> make_variational_recurrent<T>(const std::string&, const RecurrentOptions&, \
                                                                         const VariationalDropout&);
REWIND_LAYERS(float)
REWIND_LAYERS(double)

}  // namespace rw::nn
