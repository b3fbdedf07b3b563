#pragma once
// The few helpers every example shares: the common command-line options, random arrays, and a
// gradient check of a whole recurrent layer. Public API only, like the examples themselves.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <xtensor/xarray.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/layer_check.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace examples {

struct CommonOptions {
    std::uint64_t seed = 1;
    int threads = 1;
};

inline void add_common_options(CLI::App& app, CommonOptions& options) {
    app.add_option("--seed", options.seed, "seed of initialisation and data")->capture_default_str();
    app.add_option("--threads", options.threads, "GEMM threads (small recurrent GEMMs are fastest on one)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
}

// Called after parsing: rewind's GEMMs stay single-threaded unless asked.
inline void apply(const CommonOptions& options) { rw::blas::set_num_threads(options.threads); }

template <class T>
xt::xarray<T> uniform_array(const rw::Shape& shape, rw::Generator& generator, double scale = 1.0) {
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape);
    for (auto& v : value) v = T(generator.uniform(-scale, scale));
    return value;
}

template <class T>
double max_abs_difference(const xt::xarray<T>& a, const xt::xarray<T>& b) {
    return double(xt::amax(xt::abs(a - b))());
}

// Checks every gradient of a recurrent layer in float64 against central differences
// (rw::nn::gradcheck_layer) on random data: the parameters, the input and (optionally) a given
// initial state.
inline rw::GradcheckReport gradcheck_layer(rw::nn::Recurrent<double>& layer, std::size_t steps, std::size_t batch,
                                           rw::Generator& generator,
                                           const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                           bool given_initial_state = true) {
    const auto& options = layer.options();
    const rw::Tensor<double> x(uniform_array<double>({steps, batch, options.input_size}, generator), true);
    std::vector<rw::Tensor<double>> initial;
    if (given_initial_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s) {
            const rw::Shape shape{options.num_layers * layer.num_directions(), batch, options.hidden_size};
            initial.emplace_back(uniform_array<double>(shape, generator, 0.5), true);
        }
    return rw::nn::gradcheck_layer(layer, x, initial, lengths);
}

}  // namespace examples
