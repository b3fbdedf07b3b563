#pragma once
// How the gradient travels back in time through a recurrent layer (the vanishing and exploding
// gradient of the tutorials, measured): for every time step t
//   - ||dL/dh_t||, the gradient reaching each layer's hidden state (a hook on every h_t);
//   - sigma_max(dh_T/dh_t) of the top layer, by power iteration on Jacobian-vector products
//     through the tape (J^T u is a backward; J w is the backward of that backward);
//   - for LSTM and GRU, the share of each gate's activations that are saturated;
// and the per-step decay factor, ||dL/dh_(t-1)|| / ||dL/dh_t|| fitted over the whole sequence.
// What `rewind flow` and examples/gradient_flow.cpp print.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "rewind/nn/layers/recurrent.hpp"

namespace rw::nn {

enum class FlowLoss {
    last_step,   // L = <v, h_T>: only the last step's output matters (the pure backward-in-time signal)
    every_step,  // L = sum_t <v_t, h_t>: a loss summed over time, as in sequence labelling
};

struct FlowOptions {
    FlowLoss loss = FlowLoss::last_step;
    std::uint64_t seed = 0;  // the loss directions v and the power iterations' start vectors
    // sigma_max(dh_T/dh_t) at up to this many steps, evenly spaced from T-1 back to 0 (0: none).
    // The steps are analysed together as copies of the batch, so memory grows with this number.
    std::size_t singular_value_steps = 16;
    std::size_t power_iterations = 30;
    // A sigmoid gate counts as saturated within this distance of 0 or 1, a tanh one of -1 or 1.
    double saturation_margin = 0.01;
    // When positive, clip_grad_norm(parameters, max_norm) runs after the backward and the report
    // gives the parameters' gradient norm before and after it.
    double max_norm = 0;
};

struct GateSaturation {
    std::string gate;               // "input", "forget", "cell", "output" (LSTM); "reset", "update", "new" (GRU)
    std::vector<double> per_step;   // share of the gate's activations (batch x hidden) saturated at step t
    double overall = 0;             // over all steps
};

struct LayerFlow {
    std::vector<double> grad_norm;  // ||dL/dh_t|| over the batch, t = 0..T-1
    std::vector<GateSaturation> gates;  // empty for RNN cells
    double weight_hh_sigma_max = 0;     // sigma_max(W_hh) of the layer (all gates' rows)
};

struct FlowReport {
    std::string cell;                 // the cell kind, e.g. "lstm" (empty for a user's cell)
    std::size_t steps = 0, batch = 0;
    FlowLoss loss = FlowLoss::last_step;
    std::vector<LayerFlow> layers;    // bottom to top
    // sigma_max(dh_T/dh_t) of the top layer, the largest over the batch, NaN at unanalysed steps.
    std::vector<double> singular_value;
    // ||dL/dh_(t-1)|| / ||dL/dh_t|| of the top layer, fitted as exp(-slope) of a least-squares line
    // through log ||dL/dh_t|| over the steps where the norm is finite and positive. Below 1 the
    // gradient vanishes going back in time, above 1 it explodes.
    double decay_per_step = 0;
    double parameter_grad_norm = 0;  // the global L2 norm of dL/dparameters
    double clipped_grad_norm = 0;    // after clip_grad_norm (equal to the above when not clipping)
    const LayerFlow& top() const { return layers.back(); }
};

// Runs the layer (generic path: every h_t must be on the tape) on `input` [T, B, I] from its
// default initial state and analyses the flow as above. Unidirectional layers only. Leaves dL/dθ
// (clipped when options.max_norm > 0) in the parameters' .grad.
FlowReport gradient_flow(Recurrent<double>& layer, const Tensor<double>& input, const FlowOptions& options = {});

// sigma_max(W) of a matrix by power iteration on W^T W (no SVD or LAPACK needed).
double largest_singular_value(const xt::xarray<double>& matrix, std::size_t iterations = 200);

// exp(-slope) of the least-squares line through log(values[t]) against t, over the finite,
// positive values: the per-step factor of a geometric sequence read backwards.
double fitted_decay_per_step(const std::vector<double>& values);

}  // namespace rw::nn
