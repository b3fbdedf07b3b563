#pragma once
// The layers around a recurrent core: Linear, Embedding, Dropout; sequence losses; and
// recurrent (variational) dropout as a cell wrapper on the one layer machinery.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xarray.hpp>

#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>
#include <rewind/autograd/tensor.hpp>

#include "rewind/nn/layers/cell.hpp"
#include "rewind/nn/module.hpp"
#include "rewind/nn/layers/recurrent.hpp"

namespace rw::nn {

// Seeding, one style for every module: its options take `.seed` (RecurrentOptions::seed,
// LinearOptions::seed, EmbeddingOptions::seed, Dropout's seed), and the module draws from its own
// Generator(seed). Linear and Embedding also keep their earlier constructors taking a
// Generator&, which draw from the caller's stream: the same weights as before, for code written
// against them or drawing several modules from one generator.
struct LinearOptions {
    std::size_t in_features = 0;
    std::size_t out_features = 0;
    bool bias = true;
    std::uint64_t seed = 0;
};

// y = x W^T + b, torch.nn.Linear: weight [out, in], bias [out], both from
// U(-1/sqrt(in), 1/sqrt(in)) (weight drawn first). forward takes [..., in] (e.g. [N, in] or
// [T, B, in]) and returns [..., out], one GEMM over all leading positions.
template <class T>
class Linear : public Module<T> {
public:
    explicit Linear(const LinearOptions& options);
    Linear(std::size_t in_features, std::size_t out_features, Generator& generator, bool bias = true);
    Tensor<T> forward(const Tensor<T>& x) const;
    const Tensor<T>& weight() const { return weight_; }
    const Tensor<T>& bias() const { return bias_; }  // undefined without a bias

private:
    Tensor<T> weight_, bias_;
};

struct EmbeddingOptions {
    std::size_t num_embeddings = 0;
    std::size_t dim = 0;
    std::uint64_t seed = 0;
};

// Rows of weight [num_embeddings, dim] (N(0, 1), torch.nn.Embedding's default) picked by index.
template <class T>
class Embedding : public Module<T> {
public:
    explicit Embedding(const EmbeddingOptions& options);
    Embedding(std::size_t num_embeddings, std::size_t dim, Generator& generator);
    // indices of any shape S -> [S..., dim]; each must be in [0, num_embeddings).
    Tensor<T> forward(const xt::xarray<std::int64_t>& indices) const;
    // One index per sequence, [B] -> [B, dim]: a decoder's next input from its tokens.
    Tensor<T> forward(const std::vector<std::int64_t>& indices) const;
    const Tensor<T>& weight() const { return weight_; }

private:
    Tensor<T> weight_;
};

// Inverted dropout in training mode, identity in eval mode. It owns its generator so that a
// checkpoint can save that generator's state (checkpoint.hpp) and a resumed run draws the same masks.
template <class T>
class Dropout : public Module<T> {
public:
    explicit Dropout(double p, std::uint64_t seed = 0);
    Tensor<T> forward(const Tensor<T>& x);
    Generator& generator() { return generator_; }

private:
    double p_;
    Generator generator_;
};

// ---- losses over sequences ----

// [T, B] weights: 1 where t < lengths[b], else 0.
template <class T>
xt::xarray<T> length_mask(std::size_t steps, const std::vector<std::int64_t>& lengths);

// Cross-entropy at every position of logits [T, B, C] with targets [T, B] (masked-out targets
// may hold anything, e.g. -1 padding), weighted by mask [T, B] of non-negative weights (an
// xt::xarray<T> converts to the optional; lengths make one). Reduction::mean: the weighted mean
// over the selected positions (the default); sum: the sum over time and batch, as the tutorials
// define a sequence's loss; none: [T, B], each position's loss times its weight.
template <class T>
Tensor<T> sequence_cross_entropy(const Tensor<T>& logits, const xt::xarray<std::int64_t>& targets,
                                 const std::optional<xt::xarray<std::type_identity_t<T>>>& mask = std::nullopt,
                                 Reduction reduction = Reduction::mean);
template <class T>
Tensor<T> sequence_cross_entropy(const Tensor<T>& logits, const xt::xarray<std::int64_t>& targets,
                                 const std::vector<std::int64_t>& lengths, Reduction reduction = Reduction::mean);

// Squared error at the masked positions: prediction and target [T, B, F], mask [T, B].
// Reduction::mean: over the selected positions times F (unmasked, it is rw::mse_loss); sum: the
// total; none: [T, B, F], zero where masked out.
template <class T>
Tensor<T> sequence_mse(const Tensor<T>& prediction, const Tensor<T>& target, const xt::xarray<T>& mask,
                       Reduction reduction = Reduction::mean);

// ---- recurrent (variational) dropout ----

// Dropout probabilities of a cell's input x_t and of the hidden state h it reads each step.
struct VariationalDropout {
    double input = 0.0;
    double hidden = 0.0;
};

// Wraps any cell and applies variational dropout (Gal & Ghahramani, 2016): a mask is drawn per
// sequence (row of the batch) at the start of every forward of the layer and reused at every
// time step, for x_t (before the cell's input projection) and for the h the cell reads (the
// recurrent connection only: the output h and LSTM's c are not masked). Different sequences,
// layers and directions get different masks; in eval mode nothing is masked.
//
// The layer calls prepare_input() exactly once per forward before the steps, so that is where
// the masks are drawn, from the layer's generator (saved by checkpoints). The wrapper never
// uses a fused kernel, which could not see the masks; under truncated BPTT each window's
// forward draws fresh masks.
template <class T>
class VariationalDropoutCell : public RecurrentCell<T> {
public:
    VariationalDropoutCell(std::shared_ptr<RecurrentCell<T>> inner, const VariationalDropout& p, Generator& generator);

    // The module whose training mode switches the masks (the cells are not child modules of
    // their layer, so they do not see layer.train()/eval() themselves).
    void bind(const Module<T>& layer) { layer_ = &layer; }
    bool active() const;

    std::vector<std::string> state_names() const override { return inner_->state_names(); }
    Tensor<T> prepare_input(const Tensor<T>& input) const override;
    State<T> step(const Tensor<T>& x_t, const State<T>& state) const override;

    const RecurrentCell<T>& inner() const { return *inner_; }
    // The masks of the latest forward, [B, input_size] and [B, hidden_size] (empty when inactive).
    const xt::xarray<T>& input_mask() const { return input_mask_; }
    const xt::xarray<T>& hidden_mask() const { return hidden_mask_; }

private:
    std::shared_ptr<RecurrentCell<T>> inner_;
    VariationalDropout p_;
    Generator* generator_;
    const Module<T>* layer_ = nullptr;
    mutable xt::xarray<T> input_mask_ = xt::xarray<T>::from_shape({0}), hidden_mask_ = xt::xarray<T>::from_shape({0});
};

// A recurrent layer whose every cell is wrapped in VariationalDropoutCell and bound to the layer.
// Parameter names and initialisation are those of the unwrapped layer with the same seed.
template <class T>
std::shared_ptr<Recurrent<T>> make_variational_recurrent(const CellFactory<T>& factory, const RecurrentOptions& options,
                                                         const VariationalDropout& p);
// By the cell's name in the table of cells (cell_table.hpp).
template <class T>
std::shared_ptr<Recurrent<T>> make_variational_recurrent(const std::string& cell, const RecurrentOptions& options,
                                                         const VariationalDropout& p);

}  // namespace rw::nn
