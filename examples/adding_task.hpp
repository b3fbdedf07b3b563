#pragma once
// The adding problem (Hochreiter & Schmidhuber, 1997; Le et al., 2015), shared by adding_problem
// and custom_cell. Input [T, B, 2]: a random value in [0, 1) and a marker that is 1 at two
// positions, one in each half of the sequence; the target is the sum of the two marked values.
// Always predicting the mean (1) scores an MSE of 1/6, so only a model that remembers the first
// marked value across the second half does better.

#include <cstdint>
#include <vector>

#include <xtensor/xarray.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace examples::adding {

inline constexpr double kMeanBaselineMse = 1.0 / 6.0;

struct Batch {
    rw::Tensor<float> x, target;        // [T, B, 2], [B, 1]
    std::vector<std::int64_t> lengths;  // each sequence's own length
};

// Lengths drawn from [min_length, max_length] (equal for the classic fixed-length task).
inline Batch random_batch(std::size_t min_length, std::size_t max_length, std::size_t batch, rw::Generator& data) {
    xt::xarray<float> x = xt::zeros<float>({max_length, batch, std::size_t(2)}),
                      target = xt::zeros<float>({batch, std::size_t(1)});
    Batch a;
    for (std::size_t b = 0; b < batch; ++b) {
        const auto length =
            min_length == max_length ? max_length : std::size_t(data.uniform(double(min_length), double(max_length + 1)));
        for (std::size_t t = 0; t < length; ++t) x(t, b, 0) = float(data.uniform());
        for (auto t : {std::size_t(data.uniform(0, double(length / 2))),
                       std::size_t(data.uniform(double(length / 2), double(length)))}) {
            x(t, b, 1) = 1;
            target(b, 0) += x(t, b, 0);
        }
        a.lengths.push_back(std::int64_t(length));
    }
    a.x = rw::Tensor<float>(x);
    a.target = rw::Tensor<float>(target);
    return a;
}

// A recurrent layer, then a linear read-out of its final hidden state (classic fixed lengths).
struct Model : rw::nn::Module<float> {
    Model(std::shared_ptr<rw::nn::Recurrent<float>> layer, std::uint64_t seed) {
        rw::Generator init(seed);
        rnn = register_module("rnn", std::move(layer));
        head = register_module("head", std::make_shared<rw::nn::Linear<float>>(rnn->options().hidden_size, 1, init));
    }
    rw::Tensor<float> predict(const Batch& a) const {
        const rw::Tensor<float> h_n = rnn->forward(a.x).h_n();  // [1, B, H]
        return head->forward(reshape(h_n, {h_n.size(1), h_n.size(2)}));
    }
    std::shared_ptr<rw::nn::Recurrent<float>> rnn;
    std::shared_ptr<rw::nn::Linear<float>> head;
};

}  // namespace examples::adding
