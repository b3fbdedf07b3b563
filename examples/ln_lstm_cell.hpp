#pragma once
// A layer-normalised LSTM (Ba, Kiros and Hinton, 2016), as the TorchScript fastrnns benchmark's
// LayerNormLSTMCell: layer norm on the input projection, on the recurrent projection and on the
// cell state, each with its learned gain and bias (which replace the LSTM's biases):
//     i, f, g, o = split(LN_i(W_ih x) + LN_h(W_hh h))          (LN over all 4H gate pre-activations)
//     c' = LN_c(σ(f) c + σ(i) tanh(g)),   h' = σ(o) tanh(c')
// A user's cell with its generic step() and, in the same class, fused rules that normalise over
// their row: the driver hands the rule W_ih x (gates) and W_hh h (its own buffer) for one row,
// the rule reduces over the row (row_norm.hpp) and keeps for the backward what it needs in
// saved buffers. Derivatives: docs/derivatives.md.

#include <cmath>

#include <rewind/autograd.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/fused/lanes.hpp>
#include <rewind/nn/fused/row_norm.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/layers/init.hpp>

namespace examples {

template <class T>
class LNLSTMCell : public rw::nn::FusedCell<LNLSTMCell<T>, T> {
public:
    static constexpr double eps = 1e-5;  // torch.nn.LayerNorm's default

    LNLSTMCell(std::size_t input_size, std::size_t hidden_size, rw::Generator& generator)
        : rw::nn::FusedCell<LNLSTMCell<T>, T>(input_size, hidden_size) {
        using rw::nn::init::uniform;
        const double bound = 1.0 / std::sqrt(double(hidden_size));
        const std::size_t H = hidden_size;
        auto parameter = [&](const char* name, xt::xarray<T> value) { return this->register_parameter(name, rw::Tensor<T>(std::move(value))); };
        weight_ih_ = parameter("weight_ih", uniform<T>({4 * H, input_size}, -bound, bound, generator));
        weight_hh_ = parameter("weight_hh", uniform<T>({4 * H, H}, -bound, bound, generator));
        // torch.nn.LayerNorm's initialisation: gains 1, biases 0.
        gain_i_ = parameter("layernorm_i_weight", xt::ones<T>({4 * H}));
        bias_i_ = parameter("layernorm_i_bias", xt::zeros<T>({4 * H}));
        gain_h_ = parameter("layernorm_h_weight", xt::ones<T>({4 * H}));
        bias_h_ = parameter("layernorm_h_bias", xt::zeros<T>({4 * H}));
        gain_c_ = parameter("layernorm_c_weight", xt::ones<T>({H}));
        bias_c_ = parameter("layernorm_c_bias", xt::zeros<T>({H}));
    }

    std::vector<std::string> state_names() const override { return {"h", "c"}; }

    // ---- the generic path: ordinary ops, recorded on the tape ----

    // W_ih x of every step as one GEMM; its layer norm is per step, in step().
    rw::Tensor<T> prepare_input(const rw::Tensor<T>& input) const override { return rw::gemm(input, weight_ih_, false, true); }

    rw::nn::State<T> step(const rw::Tensor<T>& x_t, const rw::nn::State<T>& state) const override {
        const std::size_t H = this->hidden_size();
        const rw::Tensor<T> gates = rw::add(rw::layer_norm(x_t, {4 * H}, gain_i_, bias_i_, eps),
                                            rw::layer_norm(rw::gemm(state[0], weight_hh_, false, true), {4 * H}, gain_h_, bias_h_, eps));
        const auto parts = rw::chunk(gates, 4, 1);
        const rw::Tensor<T> i = rw::sigmoid(parts[0]), f = rw::sigmoid(parts[1]);
        const rw::Tensor<T> g = rw::tanh(parts[2]), o = rw::sigmoid(parts[3]);
        const rw::Tensor<T> c = rw::layer_norm(rw::add(rw::mul(f, state[1]), rw::mul(i, g)), {H}, gain_c_, bias_c_, eps);
        return {rw::mul(o, rw::tanh(c)), c};
    }

    // ---- the fused path ----

    // W_hh h in its own buffer (it is normalised apart from W_ih x). The rule keeps the normalised
    // rows for the backward (W_ih x's in gates, W_hh h's in saved 0-3), i, f, g, o (saved 4-7),
    // the normalised cell state (saved 8) and the three 1 / std (saved 9 on, stat() below).
    // Per-unit vectors: the gains and biases block by block (enum Unit below).
    rw::nn::fused::CellLayout layout() const override {
        const std::size_t H = this->hidden_size();
        return {.gates = 4, .states = 2, .recurrent = 4, .recurrent_into_gates = false, .saved = 9 + (3 + H - 1) / H,
                .units = 18};
    }
    rw::nn::fused::CellWeights<T> weights() const override {
        const std::size_t H = this->hidden_size();
        std::vector<rw::Tensor<T>> units;
        for (const auto* vector : {&gain_i_, &bias_i_, &gain_h_, &bias_h_})
            for (std::size_t k = 0; k < 4; ++k) units.push_back(rw::slice(*vector, 0, k * H, (k + 1) * H));
        units.push_back(gain_c_);
        units.push_back(bias_c_);
        return {.input_weight = weight_ih_, .recurrent_weight = weight_hh_, .units = std::move(units)};
    }
    std::vector<std::string> gate_names() const override { return {"input", "forget", "cell", "output"}; }

    void forward(const rw::nn::fused::ForwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        const std::size_t H = row.hidden;
        const auto in = row_moments(row.gates, 4 * H, T(eps));
        const auto rec = row_moments(row.recurrent, 4 * H, T(eps));
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            // Block k's pre-activation LN_i(W_ih x) + LN_h(W_hh h), the normalised rows kept.
            auto pre_activation = [&](std::size_t k) {
                const V ni = (load_lane<V>(row.gate(k) + j) - V(in.mean)) * V(in.rstd);
                const V nr = (load_lane<V>(row.recurrent_gate(k) + j) - V(rec.mean)) * V(rec.rstd);
                store_lane(row.gate(k) + j, ni);
                store_lane(row.saved[k] + j, nr);
                return (ni * load_lane<V>(row.units[gain_i + k] + j) + load_lane<V>(row.units[bias_i + k] + j)) +
                       (nr * load_lane<V>(row.units[gain_h + k] + j) + load_lane<V>(row.units[bias_h + k] + j));
            };
            const V i = sigmoid_lane(pre_activation(0)), f = sigmoid_lane(pre_activation(1));
            const V g = tanh_lane(pre_activation(2)), o = sigmoid_lane(pre_activation(3));
            store_lane(row.saved[4] + j, i);
            store_lane(row.saved[5] + j, f);
            store_lane(row.saved[6] + j, g);
            store_lane(row.saved[7] + j, o);
            store_lane(row.saved[8] + j, f * load_lane<V>(row.state[1] + j) + i * g);
        });
        const auto cell = row_moments(row.saved[8], H, T(eps));
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V n = (load_lane<V>(row.saved[8] + j) - V(cell.mean)) * V(cell.rstd);
            const V c = n * load_lane<V>(row.units[gain_c] + j) + load_lane<V>(row.units[bias_c] + j);
            store_lane(row.saved[8] + j, n);
            store_lane(row.next_state[1] + j, c);
            store_lane(row.next_state[0] + j, load_lane<V>(row.saved[7] + j) * tanh_lane(c));
        });
        stat(row.saved, H, 0) = in.rstd;
        stat(row.saved, H, 1) = rec.rstd;
        stat(row.saved, H, 2) = cell.rstd;
    }

    // Layer norm's backward, for y = x̂ γ + β, x̂ = (x - μ) r over a row of N:
    //   dγ += dy x̂,  dβ += dy,  dx = r (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)),  dx̂ = dy γ.
    void backward(const rw::nn::fused::BackwardRow<T>& row) const override {
        using namespace rw::nn::fused;
        const std::size_t H = row.hidden;
        const T in_rstd = stat(row.saved, H, 0), rec_rstd = stat(row.saved, H, 1), cell_rstd = stat(row.saved, H, 2);
        T* dh = row.grad_state[0];
        T* dc = row.grad_state[1];
        // Through h' = o tanh(c') into c' and o; then LN_c, dc holding dĉ = dc' γ_c meanwhile.
        RowSum<T> dn_sum, dn_dot;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V dhv = load_lane<V>(dh + j), o = load_lane<V>(row.saved[7] + j);
            const V tc = tanh_lane(load_lane<V>(row.next_state[1] + j));
            const V dcv = load_lane<V>(dc + j) + dhv * o * (V(1) - tc * tc);
            const V n = load_lane<V>(row.saved[8] + j);
            const V dn = dcv * load_lane<V>(row.units[gain_c] + j);
            store_lane(row.grad_gate(3) + j, dhv * tc * o * (V(1) - o));
            store_lane(row.grad_units[gain_c] + j, load_lane<V>(row.grad_units[gain_c] + j) + dcv * n);
            store_lane(row.grad_units[bias_c] + j, load_lane<V>(row.grad_units[bias_c] + j) + dcv);
            store_lane(dc + j, dn);
            dn_sum.add(dn);
            dn_dot.add(dn * n);
        });
        const T dn_mean = dn_sum.total() / T(H), dn_dot_mean = dn_dot.total() / T(H);
        // dL/da, a = LN_i(W_ih x) + LN_h(W_hh h), block by block into grad_gates, and in the same
        // pass the gains' and biases' gradients and the sums both norms' backward needs.
        RowSum<T> in_sum, in_dot, rec_sum, rec_dot;
        lanes<T>(H, [&](std::size_t j, auto tag) {
            using V = decltype(tag);
            const V n = load_lane<V>(row.saved[8] + j);
            const V d = V(cell_rstd) * (load_lane<V>(dc + j) - V(dn_mean) - n * V(dn_dot_mean));  // dL/d(c before LN)
            const V i = load_lane<V>(row.saved[4] + j), f = load_lane<V>(row.saved[5] + j), g = load_lane<V>(row.saved[6] + j);
            const V da[4] = {d * g * i * (V(1) - i), d * load_lane<V>(row.state[1] + j) * f * (V(1) - f),
                             d * i * (V(1) - g * g), load_lane<V>(row.grad_gate(3) + j)};
            store_lane(dc + j, d * f);
            store_lane(dh + j, V(0));  // h reaches h' only through W_hh h, whose gradient the driver adds
            for (std::size_t k = 0; k < 4; ++k) {
                const V ni = load_lane<V>(row.gate(k) + j), nr = load_lane<V>(row.saved[k] + j);
                const V dni = da[k] * load_lane<V>(row.units[gain_i + k] + j), dnr = da[k] * load_lane<V>(row.units[gain_h + k] + j);
                auto accumulate = [&](std::size_t u, const V& term) {
                    store_lane(row.grad_units[u] + j, load_lane<V>(row.grad_units[u] + j) + term);
                };
                accumulate(gain_i + k, da[k] * ni);
                accumulate(bias_i + k, da[k]);
                accumulate(gain_h + k, da[k] * nr);
                accumulate(bias_h + k, da[k]);
                store_lane(row.grad_gate(k) + j, da[k]);
                in_sum.add(dni);
                in_dot.add(dni * ni);
                rec_sum.add(dnr);
                rec_dot.add(dnr * nr);
            }
        });
        const T N = T(4 * H);
        const T in_mean = in_sum.total() / N, in_dot_mean = in_dot.total() / N;
        const T rec_mean = rec_sum.total() / N, rec_dot_mean = rec_dot.total() / N;
        for (std::size_t k = 0; k < 4; ++k)
            lanes<T>(H, [&](std::size_t j, auto tag) {
                using V = decltype(tag);
                const V da = load_lane<V>(row.grad_gate(k) + j);
                const V ni = load_lane<V>(row.gate(k) + j), nr = load_lane<V>(row.saved[k] + j);
                const V dni = da * load_lane<V>(row.units[gain_i + k] + j), dnr = da * load_lane<V>(row.units[gain_h + k] + j);
                store_lane(row.grad_recurrent_gate(k) + j, V(rec_rstd) * (dnr - V(rec_mean) - nr * V(rec_dot_mean)));
                store_lane(row.grad_gate(k) + j, V(in_rstd) * (dni - V(in_mean) - ni * V(in_dot_mean)));
            });
    }

private:
    // The per-unit vectors of weights(): gains and biases of LN_i and LN_h per gate block, LN_c's.
    enum Unit : std::size_t { gain_i = 0, bias_i = 4, gain_h = 8, bias_h = 12, gain_c = 16, bias_c = 17 };

    // Row statistic i (0: input norm's 1 / std, 1: recurrent's, 2: the cell state's) in the saved
    // buffers from 9 on, H values each.
    template <class P>
    static auto& stat(P saved, std::size_t H, std::size_t i) {
        return saved[9 + i / H][i % H];
    }

    rw::Tensor<T> weight_ih_, weight_hh_, gain_i_, bias_i_, gain_h_, bias_h_, gain_c_, bias_c_;
};

template <class T>
rw::nn::CellFactory<T> ln_lstm_factory() {
    return [](const rw::nn::CellSite& site, rw::Generator& generator) {
        return std::make_shared<LNLSTMCell<T>>(site.input_size, site.hidden_size, generator);
    };
}

}  // namespace examples
