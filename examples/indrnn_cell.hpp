#pragma once
// IndRNN (Li et al., 2018), h' = relu(W_ih x + b + u ⊙ h), u a vector: every unit sees only its
// own past. A user's cell with its generic step() and, beside it, hand-written fused rules of a
// cell without a recurrent GEMM: u is a per-unit recurrent vector of the fused layout, whose
// gradient the backward rule accumulates. Derivatives: docs/derivatives.md.
//
// Initialisation (IndRNNInit) is per layer, through the CellSite the layer hands the factory.
// Over T steps a unit's memory scales as u^T, so the paper bounds |u| <= 2^(1/T) (Li et al.
// 2018, sec. 3; with Optimizer::constrain and constraints::clamp after every update). The
// authors' adding-problem code (IndRNN_Theano_Lasagne, adding/adding.py) draws W_ih from
// N(0, 0.001^2), b = 0, u from U(0, 2^(1/T)) in the first layer and from U(2^(-1/T), 2^(1/T)) in
// the last, so that the last layer starts close to u = 1, remembering without exploding:
// IndRNNInit::authors_adding(T). The default (U(-1/sqrt(I), 1/sqrt(I)) for W_ih and b, u from
// U(0, 1)) suits short sequences only: at T = 1000 its relu units sum up hundreds of inputs of
// size ~0.5 and the first outputs are in the thousands.

#include <cmath>

#include <rewind/autograd.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/fused/lanes.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/layers/init.hpp>

namespace examples {

// A template, so the same cell trains in float and is gradient-checked in double.
struct IndRNNInit {
    double input_std = 0;            // > 0: W_ih from N(0, input_std^2) and b = 0; 0: U(-1/sqrt(I), 1/sqrt(I)) for both
    double recurrent_low = 0.0;      // u from U(recurrent_low, recurrent_high) ...
    double recurrent_high = 1.0;
    double last_recurrent_low = 0.0; // ... and in the last layer from U(last_recurrent_low, recurrent_high)

    // The authors' adding-problem initialisation for sequences of length T (magnitude: their MAG).
    static IndRNNInit authors_adding(std::size_t steps, double magnitude = 2.0) {
        return {.input_std = 1e-3,
                .recurrent_low = 0.0,
                .recurrent_high = std::pow(magnitude, 1.0 / double(steps)),
                .last_recurrent_low = std::pow(1.0 / magnitude, 1.0 / double(steps))};
    }
};

template <class T>
class IndRNNCell : public rw::nn::FusedCell<IndRNNCell<T>, T> {
public:
    IndRNNCell(std::size_t input_size, std::size_t hidden_size, rw::Generator& generator, const IndRNNInit& init = {},
               bool last_layer = false)
        : rw::nn::FusedCell<IndRNNCell<T>, T>(input_size, hidden_size) {
        using rw::nn::init::uniform;
        if (init.input_std > 0) {
            xt::xarray<T> w = xt::xarray<T>::from_shape({hidden_size, input_size});
            for (T& v : w) v = T(generator.normal(0.0, init.input_std));
            weight_ih_ = this->register_parameter("weight_ih", rw::Tensor<T>(std::move(w)));
            bias_ = this->register_parameter("bias", rw::Tensor<T>::zeros({hidden_size}));
        } else {
            const double bound = 1.0 / std::sqrt(double(input_size));
            weight_ih_ = this->register_parameter("weight_ih", rw::Tensor<T>(uniform<T>({hidden_size, input_size}, -bound, bound, generator)));
            bias_ = this->register_parameter("bias", rw::Tensor<T>(uniform<T>({hidden_size}, -bound, bound, generator)));
        }
        const double low = last_layer ? init.last_recurrent_low : init.recurrent_low;
        weight_hh_ = this->register_parameter("weight_hh", rw::Tensor<T>(uniform<T>({hidden_size}, low, init.recurrent_high, generator)));
    }

    // The input projection does not depend on the state, so it is one GEMM over all steps
    // instead of one small GEMM per step; step() then receives row t of it.
    rw::Tensor<T> prepare_input(const rw::Tensor<T>& input) const override {
        return rw::add(rw::gemm(input, weight_ih_, false, true), bias_);
    }

    rw::nn::State<T> step(const rw::Tensor<T>& projected_x, const rw::nn::State<T>& state) const override {
        return {rw::relu(projected_x + weight_hh_ * state[0])};  // u [H] broadcasts over the batch
    }

    // ---- fused rules: one gate block, no recurrent GEMM, u as a per-unit vector ----
    rw::nn::fused::CellLayout layout() const override { return {.gates = 1, .states = 1, .recurrent = 0, .units = 1}; }
    rw::nn::fused::CellWeights<T> weights() const override {
        return {.input_weight = weight_ih_, .input_bias = bias_, .units = {weight_hh_}};
    }
    std::vector<std::string> gate_names() const override { return {"pre-activation"}; }

    // gate(0): W_ih x + b in, h' out (relu's derivative is read off it).
    void forward(const rw::nn::fused::ForwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V y = relu_lane(load_lane<V>(row.gate(0) + j) + load_lane<V>(row.units[0] + j) * load_lane<V>(row.state[0] + j));
            store_lane(row.gate(0) + j, y);
            store_lane(row.next_state[0] + j, y);
        });
    }

    // da = dh' [h' > 0];  du += da ⊙ h;  dh (direct, the only path) = da ⊙ u.
    void backward(const rw::nn::fused::BackwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        T* dh = row.grad_state[0];
        T* du = row.grad_units[0];
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V d = where_positive(load_lane<V>(row.gate(0) + j), load_lane<V>(dh + j));
            store_lane(row.grad_gate(0) + j, d);
            store_lane(du + j, load_lane<V>(du + j) + d * load_lane<V>(row.state[0] + j));
            store_lane(dh + j, d * load_lane<V>(row.units[0] + j));
        });
    }

private:
    rw::Tensor<T> weight_ih_, bias_, weight_hh_;
};

// Each layer's cell, initialised for its place in the stack (CellSite::last_layer()).
template <class T>
rw::nn::CellFactory<T> indrnn_factory(const IndRNNInit& init = {}) {
    return [init](const rw::nn::CellSite& site, rw::Generator& generator) {
        return std::make_shared<IndRNNCell<T>>(site.input_size, site.hidden_size, generator, init, site.last_layer());
    };
}

}  // namespace examples
