#pragma once
// IndRNN (Li et al., 2018), h' = relu(W_ih x + b + u ⊙ h), u a vector: every unit sees only its
// own past. A user's cell with its generic step() and, beside it, hand-written fused rules of a
// cell without a recurrent GEMM: u is a per-unit recurrent vector of the fused layout, whose
// gradient the backward rule accumulates. Derivatives: docs/derivatives.md.

#include <cmath>

#include <rewind/autograd.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/fused/lanes.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/layers/init.hpp>

namespace examples {

// A template, so the same cell trains in float and is gradient-checked in double.
template <class T>
class IndRNNCell : public rw::nn::FusedCell<IndRNNCell<T>, T> {
public:
    IndRNNCell(std::size_t input_size, std::size_t hidden_size, rw::Generator& generator)
        : rw::nn::FusedCell<IndRNNCell<T>, T>(input_size, hidden_size) {
        using rw::nn::init::uniform;
        const double bound = 1.0 / std::sqrt(double(input_size));
        weight_ih_ = this->register_parameter("weight_ih", rw::Tensor<T>(uniform<T>({hidden_size, input_size}, -bound, bound, generator)));
        bias_ = this->register_parameter("bias", rw::Tensor<T>(uniform<T>({hidden_size}, -bound, bound, generator)));
        // |u| <= 1 keeps relu's recurrence from blowing up; the paper draws u in [0, 1).
        weight_hh_ = this->register_parameter("weight_hh", rw::Tensor<T>(uniform<T>({hidden_size}, 0.0, 1.0, generator)));
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

template <class T>
rw::nn::CellFactory<T> indrnn_factory() {
    return [](std::size_t input_size, std::size_t hidden_size, rw::Generator& generator) {
        return std::make_shared<IndRNNCell<T>>(input_size, hidden_size, generator);
    };
}

}  // namespace examples
