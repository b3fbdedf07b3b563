#include "rewind/nn/analysis/gradient_flow.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/engine.hpp>
#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/ops.hpp>

#include "rewind/nn/train/clip.hpp"

namespace rw::nn {

namespace {

using Array = xt::xarray<double>;
constexpr double not_analysed = std::numeric_limits<double>::quiet_NaN();

double l2(const Array& a) {
    double sum = 0;
    for (double v : a) sum += v * v;
    return std::sqrt(sum);
}

Array uniform(const Shape& shape, Generator& generator) {
    Array value = checked_array<double>("gradient_flow", shape);
    for (double& v : value) v = generator.uniform(-1.0, 1.0);
    return value;
}

// The observer's view of one run: every layer's h_t, in time order.
struct ObservedRun {
    std::vector<std::vector<Tensor<double>>> hidden;  // [layer][t]
    RecurrentResult<double> result;
};

ObservedRun run_observed(Recurrent<double>& layer, const Tensor<double>& input) {
    ObservedRun run;
    run.hidden.assign(layer.options().num_layers, std::vector<Tensor<double>>(input.size(0)));
    layer.set_step_observer([&run](std::size_t l, std::size_t, std::size_t t, const Tensor<double>& h) {
        run.hidden[l][t] = h;
    });
    try {
        run.result = layer.forward(input);
    } catch (...) {
        layer.set_step_observer(nullptr);
        throw;
    }
    layer.set_step_observer(nullptr);
    return run;
}

// ---- gate saturation (LSTM, GRU) ----

struct GateKind {
    const char* name;
    bool is_tanh;
};

// By the cell's type, not its name: the saturation formulas below are LSTM's and GRU's.
std::vector<GateKind> gate_kinds(const RecurrentCell<double>& cell) {
    if (dynamic_cast<const LSTMCell<double>*>(&cell))
        return {{"input", false}, {"forget", false}, {"cell", true}, {"output", false}};
    if (dynamic_cast<const GRUCell<double>*>(&cell)) return {{"reset", false}, {"update", false}, {"new", true}};
    return {};
}

double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }

// Recomputes the gate activations of every step from the layer's input and previous hidden
// state with PyTorch's equations (cells.hpp), as values only, and counts the saturated ones.
std::vector<GateSaturation> gate_saturation(Recurrent<double>& layer, std::size_t l, const Tensor<double>& input,
                                            const ObservedRun& run, double margin) {
    const auto* cell = dynamic_cast<const StandardCell<double>*>(&layer.cell(l, 0));
    const auto kinds = cell ? gate_kinds(*cell) : std::vector<GateKind>{};
    if (kinds.empty()) return {};
    NoGradGuard no_grad;
    // The gates have hidden_size units; h has state_size(0) (proj_size for a projected LSTM).
    const std::size_t steps = input.size(0), batch = input.size(1), hidden = layer.options().hidden_size;
    const Tensor<double> x = l == 0 ? input.detach() : stack(run.hidden[l - 1], 0).detach();
    Array previous = Array::from_shape({steps, batch, layer.state_size(0)});
    for (std::size_t t = 0; t < steps; ++t) {
        if (t > 0) {
            xt::view(previous, t) = run.hidden[l][t - 1].value();
        } else if (layer.options().initial_state == InitialState::learned) {
            const Array& h0 = layer.parameter(fmt::format("initial_h_l{}", l)).value();
            for (std::size_t b = 0; b < batch; ++b) xt::view(previous, 0, b) = h0;
        } else {
            xt::view(previous, 0) = 0.0;
        }
    }
    auto affine = [](const Tensor<double>& input, const Tensor<double>& weight, const Tensor<double>& bias) {
        const Tensor<double> product = gemm(input, weight, false, true);
        return Array(bias.defined() ? add(product, bias).value() : product.value());  // bias=False: none
    };
    const Array from_x = affine(x, cell->weight_ih(), cell->bias_ih());
    const Array from_h = affine(Tensor<double>(previous), cell->weight_hh(), cell->bias_hh());

    std::vector<GateSaturation> gates(kinds.size());
    for (std::size_t g = 0; g < kinds.size(); ++g) {
        gates[g].gate = kinds[g].name;
        gates[g].per_step.assign(steps, 0.0);
    }
    const bool gru = dynamic_cast<const GRUCell<double>*>(cell) != nullptr;
    std::vector<double> activation(kinds.size());
    for (std::size_t t = 0; t < steps; ++t)
        for (std::size_t b = 0; b < batch; ++b)
            for (std::size_t j = 0; j < hidden; ++j) {
                auto pre = [&](const Array& a, std::size_t g) { return a(t, b, g * hidden + j); };
                if (gru) {
                    const double r = sigmoid(pre(from_x, 0) + pre(from_h, 0));
                    activation = {r, sigmoid(pre(from_x, 1) + pre(from_h, 1)),
                                  std::tanh(pre(from_x, 2) + r * pre(from_h, 2))};
                } else {
                    for (std::size_t g = 0; g < kinds.size(); ++g) {
                        const double a = pre(from_x, g) + pre(from_h, g);
                        activation[g] = kinds[g].is_tanh ? std::tanh(a) : sigmoid(a);
                    }
                }
                for (std::size_t g = 0; g < kinds.size(); ++g) {
                    const double a = activation[g];
                    const bool saturated = kinds[g].is_tanh ? std::abs(a) >= 1 - margin : (a <= margin || a >= 1 - margin);
                    if (saturated) gates[g].per_step[t] += 1;
                }
            }
    for (auto& gate : gates) {
        double total = 0;
        for (double& share : gate.per_step) {
            total += share;
            share /= double(batch * hidden);
        }
        gate.overall = total / double(steps * batch * hidden);
    }
    return gates;
}

// ---- sigma_max(dh_T/dh_t) by power iteration on J J^T ----

// The steps to analyse: T-1, then evenly back to 0.
std::vector<std::size_t> analysed_steps(std::size_t steps, std::size_t wanted) {
    std::set<std::size_t, std::greater<>> chosen;
    if (wanted == 1) chosen.insert(steps - 1);
    for (std::size_t k = 0; wanted > 1 && k < wanted; ++k)
        chosen.insert(steps - 1 - std::size_t(std::llround(double(k) * double(steps - 1) / double(wanted - 1))));
    return {chosen.begin(), chosen.end()};
}

// Every analysed step t_k gets its own copy k of the batch, so one backward gives J_k^T u_k for
// all of them at once (copies never mix), and one backward of that backward (create_graph) gives
// J_k w_k: the Jacobian-vector products that power iteration on J_k J_k^T needs.
std::vector<double> singular_values(Recurrent<double>& layer, const Tensor<double>& input, const FlowOptions& options) {
    const std::size_t steps = input.size(0), batch = input.size(1), hidden = layer.state_size(0);
    const std::size_t top = layer.options().num_layers - 1;
    std::vector<double> sigma(steps, not_analysed);
    const std::vector<std::size_t> analysed = analysed_steps(steps, std::min(options.singular_value_steps, steps));
    const std::size_t copies = analysed.size();

    Tensor<double> replicated;
    {
        NoGradGuard no_grad;
        replicated = concat(std::vector<Tensor<double>>(copies, input.detach()), 1);
    }
    const ObservedRun run = run_observed(layer, replicated);
    const Tensor<double>& last = run.hidden[top][steps - 1];
    std::vector<Tensor<double>> targets;
    for (std::size_t t : analysed) targets.push_back(run.hidden[top][t]);

    Generator generator(options.seed + 1);
    Array u = uniform({copies * batch, hidden}, generator);
    // Normalises each row (one sequence of one copy) and returns the norms it divided by.
    auto normalise_rows = [hidden](Array& a) {
        std::vector<double> norms(a.shape(0));
        for (std::size_t r = 0; r < a.shape(0); ++r) {
            double sum = 0;
            for (std::size_t j = 0; j < hidden; ++j) sum += a(r, j) * a(r, j);
            norms[r] = std::sqrt(sum);
            if (norms[r] > 0 && std::isfinite(norms[r]))
                for (std::size_t j = 0; j < hidden; ++j) a(r, j) /= norms[r];
        }
        return norms;
    };
    normalise_rows(u);
    std::vector<double> estimate(copies * batch, 0.0);
    for (std::size_t iteration = 0; iteration < options.power_iterations; ++iteration) {
        const Tensor<double> seed(u, /*requires_grad=*/true);
        const auto transposed = grad<double>({last}, targets, {seed}, {.create_graph = true});  // J_k^T u_k
        std::vector<Tensor<double>> products;
        Array w = Array::from_shape({copies * batch, hidden});
        for (std::size_t k = 0; k < copies; ++k) {
            const Tensor<double> block = slice(transposed[k], 0, k * batch, (k + 1) * batch);
            xt::view(w, xt::range(k * batch, (k + 1) * batch)) = block.value();
            products.push_back(sum(mul(block, Tensor<double>(Array(block.value())))));
        }
        const std::vector<double> norms = normalise_rows(w);  // ||J^T u||: the Rayleigh estimate of sigma
        double change = 0;
        for (std::size_t r = 0; r < norms.size(); ++r) {
            change = std::max(change, std::abs(norms[r] - estimate[r]) / std::max(norms[r], 1e-300));
            estimate[r] = norms[r];
        }
        if (change < 1e-7 || iteration + 1 == options.power_iterations) break;
        Array next = grad<double>({sum(stack(products, 0))}, {seed}, {}, {.retain_graph = true})[0].value();  // J_k J_k^T u_k
        normalise_rows(next);
        u = std::move(next);
    }
    for (std::size_t k = 0; k < copies; ++k) {
        double largest = 0;
        for (std::size_t b = 0; b < batch; ++b) largest = std::max(largest, estimate[k * batch + b]);
        sigma[analysed[k]] = largest;
    }
    return sigma;
}

}  // namespace

double largest_singular_value(const xt::xarray<double>& matrix, std::size_t iterations) {
    if (matrix.dimension() != 2) throw std::invalid_argument("largest_singular_value: expects a matrix");
    const std::size_t rows = matrix.shape(0), columns = matrix.shape(1);
    Generator generator(7);
    Array v = uniform({columns}, generator), w = Array::from_shape({rows});
    double sigma = 0;
    for (std::size_t i = 0; i < iterations; ++i) {
        for (std::size_t r = 0; r < rows; ++r) {
            double s = 0;
            for (std::size_t c = 0; c < columns; ++c) s += matrix(r, c) * v(c);
            w(r) = s;
        }
        sigma = l2(w);
        if (sigma == 0) return 0;
        v.fill(0.0);
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t c = 0; c < columns; ++c) v(c) += matrix(r, c) * w(r);
        v /= l2(v);
    }
    return sigma;
}

double fitted_decay_per_step(const std::vector<double>& values) {
    double n = 0, st = 0, sy = 0, stt = 0, sty = 0;
    for (std::size_t t = 0; t < values.size(); ++t) {
        if (!(values[t] > 0) || !std::isfinite(values[t])) continue;
        const double y = std::log(values[t]), x = double(t);
        n += 1, st += x, sy += y, stt += x * x, sty += x * y;
    }
    if (n < 2) return not_analysed;
    const double slope = (n * sty - st * sy) / (n * stt - st * st);
    return std::exp(-slope);
}

FlowReport gradient_flow(Recurrent<double>& layer, const Tensor<double>& input, const FlowOptions& options) {
    const RecurrentOptions& config = layer.options();
    if (config.bidirectional)
        throw std::invalid_argument("gradient_flow: follows the gradient back in time through one direction; "
                                    "the layer is bidirectional");
    if (config.batch_first) throw std::invalid_argument("gradient_flow: expects a time-major layer (batch_first off)");
    if (input.dim() != 3 || input.size(2) != config.input_size || input.size(0) == 0 || input.size(1) == 0)
        throw_shape_error("gradient_flow", fmt::format("expects input [T, B, {}]", config.input_size), input.shape());
    const std::size_t steps = input.size(0), batch = input.size(1), hidden = layer.state_size(0);  // h's width

    FlowReport report;
    report.cell = layer.cell(0, 0).kind();
    report.steps = steps;
    report.batch = batch;
    report.loss = options.loss;
    report.layers.resize(config.num_layers);

    const ObservedRun run = run_observed(layer, input.detach());
    for (std::size_t l = 0; l < config.num_layers; ++l) {
        LayerFlow& flow = report.layers[l];
        flow.grad_norm.assign(steps, 0.0);
        for (std::size_t t = 0; t < steps; ++t) {
            Tensor<double> h = run.hidden[l][t];  // a handle to the same tensor, so the hook lands on it
            h.register_hook([&flow, t](const Tensor<double>& gradient) { flow.grad_norm[t] = l2(gradient.value()); });
        }
        const auto* cell = dynamic_cast<const StandardCell<double>*>(&layer.cell(l, 0));
        flow.weight_hh_sigma_max = cell ? largest_singular_value(cell->weight_hh().value()) : not_analysed;
        flow.gates = gate_saturation(layer, l, input, run, options.saturation_margin);
    }
    Generator generator(options.seed);
    const auto& top = run.hidden.back();
    Tensor<double> loss;
    if (options.loss == FlowLoss::last_step)
        loss = sum(mul(top.back(), Tensor<double>(uniform({batch, hidden}, generator))));
    else
        loss = sum(mul(stack(top, 0), Tensor<double>(uniform({steps, batch, hidden}, generator))));
    layer.zero_grad();
    loss.backward();

    const auto parameters = layer.named_parameters();
    report.parameter_grad_norm = clip_grad_norm(parameters, options.max_norm > 0 ? options.max_norm : INFINITY);
    double squares = 0;
    for (const auto& [name, p] : parameters)
        if (p.grad().defined())
            for (double g : p.grad().value()) squares += g * g;
    report.clipped_grad_norm = std::sqrt(squares);
    report.decay_per_step = fitted_decay_per_step(report.top().grad_norm);
    report.singular_value = options.singular_value_steps > 0 ? singular_values(layer, input, options)
                                                              : std::vector<double>(steps, not_analysed);
    return report;
}

}  // namespace rw::nn
