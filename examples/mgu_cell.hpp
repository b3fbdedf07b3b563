#pragma once
// A minimal gated unit (MGU; Zhou et al., 2016) written as a user's cell, with its generic step()
// and its hand-written fused rules side by side:
//     f  = σ(W_f x + b_f + U_f h)
//     h̃  = tanh(W_h x + b_h + U_h (f ⊙ h))
//     h' = (1 - f) ⊙ h + f ⊙ h̃
// The recurrent product U_h (f ⊙ h) depends on the gate f of the same step: a step has two
// dependent GEMM stages, which the fused layout declares (recurrent = 1 block for U_f h, second
// = 1 block for U_h q with q = f ⊙ h); the library's driver runs both GEMMs, packed once per
// sequence, and every other part of the sequence. Derivatives: docs/derivatives.md.

#include <cmath>

#include <rewind/autograd.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/fused/lanes.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/layers/init.hpp>

namespace examples {

template <class T>
class MGUCell : public rw::nn::FusedCell<MGUCell<T>, T> {
public:
    MGUCell(std::size_t input_size, std::size_t hidden_size, rw::Generator& generator)
        : rw::nn::FusedCell<MGUCell<T>, T>(input_size, hidden_size) {
        using rw::nn::init::uniform;
        const double bound = 1.0 / std::sqrt(double(hidden_size));
        const std::size_t H = hidden_size;
        // Blocks of weight_ih and bias: f, then h̃ (one GEMM projects both).
        weight_ih_ = this->register_parameter("weight_ih", rw::Tensor<T>(uniform<T>({2 * H, input_size}, -bound, bound, generator)));
        bias_ = this->register_parameter("bias", rw::Tensor<T>(uniform<T>({2 * H}, -bound, bound, generator)));
        weight_f_ = this->register_parameter("weight_hf", rw::Tensor<T>(uniform<T>({H, H}, -bound, bound, generator)));
        weight_h_ = this->register_parameter("weight_hh", rw::Tensor<T>(uniform<T>({H, H}, -bound, bound, generator)));
    }

    // ---- the generic path: ordinary ops, recorded on the tape ----

    // Both input projections of every step as one GEMM: [T, B, I] -> [T, B, 2H].
    rw::Tensor<T> prepare_input(const rw::Tensor<T>& input) const override {
        return rw::add(rw::gemm(input, weight_ih_, false, true), bias_);
    }

    rw::nn::State<T> step(const rw::Tensor<T>& x_t, const rw::nn::State<T>& state) const override {
        const auto& h = state[0];
        const auto parts = rw::chunk(x_t, 2, 1);
        const rw::Tensor<T> f = rw::sigmoid(rw::add(parts[0], rw::gemm(h, weight_f_, false, true)));
        const rw::Tensor<T> candidate = rw::tanh(rw::add(parts[1], rw::gemm(rw::mul(f, h), weight_h_, false, true)));
        return {rw::add(h, rw::mul(f, rw::sub(candidate, h)))};  // (1 - f) h + f h̃
    }

    // ---- the fused path: the layout, the weights, and the point-wise rules of one row (FusedCell
    // supplies fused_rules() and rules_cell_type()) ----

    rw::nn::fused::CellLayout layout() const override {
        return {.gates = 2, .states = 1, .recurrent = 1, .recurrent_into_gates = true, .second = 1};
    }
    rw::nn::fused::CellWeights<T> weights() const override {
        return {.input_weight = weight_ih_, .input_bias = bias_, .recurrent_weight = weight_f_, .gated_state_weight = weight_h_};
    }
    std::vector<std::string> gate_names() const override { return {"forget", "candidate"}; }

    // Stage 1: gate(0) holds W_f x + b_f + U_f h. Keeps f there; writes q = f ⊙ h.
    void forward(const rw::nn::fused::ForwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V f = sigmoid_lane(load_lane<V>(row.gate(0) + j));
            store_lane(row.gate(0) + j, f);
            store_lane(row.gated_state + j, f * load_lane<V>(row.state[0] + j));
        });
    }

    // Stage 2: row.second holds U_h q. Keeps h̃ in gate(1); writes h'.
    void forward_second(const rw::nn::fused::ForwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V c = tanh_lane(load_lane<V>(row.gate(1) + j) + load_lane<V>(row.second + j));
            const V h = load_lane<V>(row.state[0] + j);
            store_lane(row.gate(1) + j, c);
            store_lane(row.next_state[0] + j, h + load_lane<V>(row.gate(0) + j) * (c - h));
        });
    }

    // Backward, stage 2 first: d(h̃ pre-activation) = dh' f (1 - h̃²), which is also the gradient
    // of the second product U_h q. grad_state is left alone here.
    void backward_second(const rw::nn::fused::BackwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V c = load_lane<V>(row.gate(1) + j);
            const V d = load_lane<V>(row.grad_state[0] + j) * load_lane<V>(row.gate(0) + j) * (V(1) - c * c);
            store_lane(row.grad_gate(1) + j, d);
            store_lane(row.grad_second + j, d);
        });
    }

    // Then stage 1, with dq = d(U_h q) U_h from the driver:
    //   df = dh' (h̃ - h) + dq h,  d(f pre-activation) = df f (1 - f),  dh (direct) = dh' (1 - f) + dq f.
    void backward(const rw::nn::fused::BackwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        T* dh = row.grad_state[0];
        lanes<T>(row.hidden, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V f = load_lane<V>(row.gate(0) + j), h = load_lane<V>(row.state[0] + j);
            const V dhv = load_lane<V>(dh + j), dq = load_lane<V>(row.grad_gated_state + j);
            const V df = dhv * (load_lane<V>(row.gate(1) + j) - h) + dq * h;
            store_lane(row.grad_gate(0) + j, df * f * (V(1) - f));
            store_lane(dh + j, dhv * (V(1) - f) + dq * f);
        });
    }

private:
    rw::Tensor<T> weight_ih_, bias_, weight_f_, weight_h_;
};

template <class T>
rw::nn::CellFactory<T> mgu_factory() {
    return [](const rw::nn::CellSite& site, rw::Generator& generator) {
        return std::make_shared<MGUCell<T>>(site.input_size, site.hidden_size, generator);
    };
}

}  // namespace examples
