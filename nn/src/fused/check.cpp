// check_fused_cell: the fused driver's per-step values (probe.hpp) against the cell's step() run
// one step at a time on the tape, each step's inputs leaves, so every per-step gradient is read
// directly rather than inferred.

#include "rewind/nn/fused/check.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/engine.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>

#include "check_tangent.hpp"
#include "probe.hpp"

namespace rw::nn {

namespace {

using Array = xt::xarray<double>;

// The shapes come from the caller's steps and batch: checked before anything is allocated.
Array random_array(const Shape& shape, Generator& g, double scale) {
    Array a = checked_array<double>("check_fused_cell", shape);
    for (auto& v : a) v = g.uniform(-scale, scale);
    return a;
}

TensorDifference difference(const std::string& name, const Array& fused, const Array& tape) {
    TensorDifference d{name, 0, 0};
    if (fused.shape() != tape.shape()) return {name, INFINITY, 0};
    for (std::size_t i = 0; i < fused.size(); ++i) {
        const double a = fused.data()[i], b = tape.data()[i];
        d.difference = std::max(d.difference, std::isnan(a) != std::isnan(b) ? INFINITY : std::abs(a - b));
        d.scale = std::max(d.scale, std::abs(b));
    }
    return d;
}

bool agrees(const TensorDifference& d, double tolerance) {
    return d.difference <= tolerance * std::max(1.0, d.scale);
}

Array grad_or_zeros(const Tensor<double>& t) {
    return t.grad().defined() ? t.grad().value() : Array(xt::zeros<double>(t.shape()));
}

// rows of [B, *] where the sequence runs at step t.
bool active(const std::vector<std::int64_t>& lengths, std::size_t t, std::size_t b) {
    return lengths.empty() || std::int64_t(t) < lengths[b];
}

// Widths follow the cell's state_size(s): h may be narrower than H (LSTM with proj_size).
struct Data {
    Array x;                                 // [T, B, I]
    std::vector<Array> initial;              // per state [B, width]
    std::vector<std::int64_t> lengths;       // empty or per row
    Array out_weight;                        // [T, B, h's width]
    std::vector<Array> final_weight;         // per state [B, width]
};

// The fused side: forward, loss, backward, per-step values from the probe.
struct FusedRun {
    std::shared_ptr<fused::detail::SequenceProbe<double>> probe = std::make_shared<fused::detail::SequenceProbe<double>>();
    std::vector<Array> gradients;  // parameters, x, initial states
};

struct TapeRun {
    std::vector<Array> states_after;        // per state [T, B, width]
    std::vector<Array> grad_states_before;  // per state [T, B, width]
    Array grad_prepared;                    // [T, B, W]
    std::vector<Array> gradients;
};

std::vector<Tensor<double>> parameters_of(const RecurrentCell<double>& cell) {
    std::vector<Tensor<double>> out;
    for (const auto& [name, p] : cell.named_parameters()) out.push_back(p);
    return out;
}

void zero_parameter_grads(const RecurrentCell<double>& cell) {
    for (auto p : parameters_of(cell)) p.zero_grad();
}

std::vector<Array> gradients_of(const RecurrentCell<double>& cell, const Tensor<double>& x,
                                const std::vector<Tensor<double>>& initial) {
    std::vector<Array> out;
    for (const auto& p : parameters_of(cell)) out.push_back(grad_or_zeros(p));
    out.push_back(grad_or_zeros(x));
    for (const auto& s : initial) out.push_back(grad_or_zeros(s));
    return out;
}

FusedRun run_fused(const RecurrentCell<double>& cell, const fused::CellRules<double>& rules, const Data& data,
                   bool reverse) {
    zero_parameter_grads(cell);
    FusedRun run;
    Tensor<double> x(data.x, true);
    std::vector<Tensor<double>> initial;
    for (const auto& s : data.initial) initial.emplace_back(s, true);
    auto result = fused::detail::run_sequence_probed<double>(rules, x, initial, data.lengths, reverse, cell.kind(), run.probe);
    Tensor<double> loss = sum(mul(result.output, Tensor<double>(data.out_weight)));
    for (std::size_t s = 0; s < initial.size(); ++s)
        loss = add(loss, sum(mul(result.final_state[s], Tensor<double>(data.final_weight[s]))));
    loss.backward();
    run.gradients = gradients_of(cell, x, initial);
    zero_parameter_grads(cell);
    return run;
}

TapeRun run_tape(const RecurrentCell<double>& cell, const Data& data, bool reverse) {
    zero_parameter_grads(cell);
    const std::size_t T = data.x.shape(0), B = data.x.shape(1), S = data.initial.size();
    Tensor<double> x(data.x, true);
    const Tensor<double> prepared = cell.prepare_input(x);
    const Array prepared_value = prepared.value();

    TapeRun run;
    for (std::size_t s = 0; s < S; ++s) {
        run.states_after.push_back(Array::from_shape({T, B, cell.state_size(s)}));
        run.grad_states_before.push_back(Array::from_shape({T, B, cell.state_size(s)}));
    }
    // Forward, each step on leaves so that its gradients can be read one by one.
    struct Step {
        Tensor<double> input;
        State<double> state, next;
    };
    std::vector<Step> steps(T);
    std::vector<Array> state = data.initial;
    for (std::size_t k = 0; k < T; ++k) {
        const std::size_t t = reverse ? T - 1 - k : k;
        Step& step = steps[t];
        step.input = Tensor<double>(Array(xt::view(prepared_value, t)), true);
        for (std::size_t s = 0; s < S; ++s) step.state.emplace_back(state[s], true);
        step.next = cell.step(step.input, step.state);
        if (step.next.size() != S)
            throw std::logic_error(fmt::format("check_fused_cell: step() returned {} states, expected {}", step.next.size(), S));
        for (std::size_t s = 0; s < S; ++s) {
            Array next = step.next[s].value();
            for (std::size_t b = 0; b < B; ++b)
                if (!active(data.lengths, t, b)) xt::view(next, b) = xt::view(state[s], b);
            state[s] = next;
            xt::view(run.states_after[s], t) = next;
        }
    }
    // Backward from the last step run to the first.
    std::vector<Array> grad = data.final_weight;
    Array grad_prepared = xt::zeros<double>(prepared_value.shape());
    for (std::size_t k = T; k-- > 0;) {
        const std::size_t t = reverse ? T - 1 - k : k;
        Step& step = steps[t];
        std::vector<Tensor<double>> seeds;
        for (std::size_t s = 0; s < S; ++s) {
            Array seed = grad[s];
            if (s == 0) seed += xt::view(data.out_weight, t);
            for (std::size_t b = 0; b < B; ++b)
                if (!active(data.lengths, t, b)) xt::view(seed, b) = 0.0;
            seeds.emplace_back(seed);
        }
        backward(step.next, seeds);
        for (std::size_t s = 0; s < S; ++s) {
            const Array through_step = grad_or_zeros(step.state[s]);
            for (std::size_t b = 0; b < B; ++b)
                if (active(data.lengths, t, b)) xt::view(grad[s], b) = xt::view(through_step, b);
            xt::view(run.grad_states_before[s], t) = grad[s];
        }
        xt::view(grad_prepared, t) = grad_or_zeros(step.input);
    }
    backward<double>({prepared}, {Tensor<double>(grad_prepared)});
    run.grad_prepared = std::move(grad_prepared);
    run.gradients = gradients_of(cell, x, {});
    // The initial states' gradients are what reached the first step run.
    for (std::size_t s = 0; s < S; ++s) run.gradients.push_back(grad[s]);
    zero_parameter_grads(cell);
    return run;
}

}  // namespace

FusedCheckReport check_fused_cell(const RecurrentCell<double>& cell, const FusedCheckOptions& options) {
    std::string why_not;
    const fused::CellRules<double>* rules = cell.usable_fused_rules(&why_not);
    if (!rules) throw std::invalid_argument("check_fused_cell: " + why_not);
    if (options.steps == 0 || options.batch == 0)
        throw std::invalid_argument("check_fused_cell: needs at least one step and one row");
    const fused::CellLayout layout = rules->layout();
    const std::size_t T = options.steps, B = options.batch, H = cell.hidden_size(), S = cell.state_count();
    const std::vector<std::string> states = cell.state_names();
    const std::vector<std::string> gates = rules->gate_names();

    Generator g(options.seed);
    Data data;
    data.x = random_array({T, B, cell.input_size()}, g, 1.0);
    for (std::size_t s = 0; s < S; ++s) data.initial.push_back(random_array({B, cell.state_size(s)}, g, 0.8));
    if (options.with_lengths) {
        for (std::size_t b = 0; b < B; ++b) data.lengths.push_back(1 + std::int64_t(g.uniform(0, 1) * double(T)) % std::int64_t(T));
        data.lengths[std::size_t(g.uniform(0, 1) * double(B)) % B] = std::int64_t(T);
    }
    data.out_weight = random_array({T, B, cell.state_size(0)}, g, 1.0);
    for (std::size_t s = 0; s < S; ++s) data.final_weight.push_back(random_array({B, cell.state_size(s)}, g, 1.0));

    std::vector<std::string> gradient_names;
    for (const auto& [name, p] : cell.named_parameters()) gradient_names.push_back(name);
    gradient_names.push_back("x");
    for (const auto& s : states) gradient_names.push_back(s + "0");

    FusedCheckReport report;
    report.tolerance = options.tolerance;
    auto diverge = [&](const char* pass, bool reverse, std::size_t step, const TensorDifference& d) {
        if (!report.passed) return;
        report.passed = false;
        report.pass = pass;
        report.reverse = reverse;
        report.step = step;
        report.tensor = d.tensor;
        report.difference = d.difference;
        report.scale = d.scale;
    };
    for (const bool reverse : options.both_directions ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
        const FusedRun fused = run_fused(cell, *rules, data, reverse);
        const TapeRun tape = run_tape(cell, data, reverse);
        const bool compare_gates = tape.grad_prepared.shape(2) == layout.gates * H;
        if (!compare_gates)
            report.gates_note = fmt::format("prepare_input() gives {} columns, not G*H = {}: gate blocks not compared",
                                            tape.grad_prepared.shape(2), layout.gates * H);
        FusedDirectionReport direction;
        direction.reverse = reverse;
        for (std::size_t t = 0; t < T; ++t) {
            StepDifferences step;
            step.step = t;
            for (std::size_t s = 0; s < S; ++s)
                step.forward.push_back(difference(states[s], Array(xt::view(fused.probe->states_after[s], t)),
                                                  Array(xt::view(tape.states_after[s], t))));
            if (compare_gates)
                for (std::size_t k = 0; k < layout.gates; ++k) {
                    auto block = xt::range(k * H, (k + 1) * H);
                    step.backward.push_back(difference("gate " + gates[k],
                                                       Array(xt::view(fused.probe->grad_gates, t, xt::all(), block)),
                                                       Array(xt::view(tape.grad_prepared, t, xt::all(), block))));
                }
            for (std::size_t s = 0; s < S; ++s)
                step.backward.push_back(difference(states[s], Array(xt::view(fused.probe->grad_states_before[s], t)),
                                                   Array(xt::view(tape.grad_states_before[s], t))));
            direction.steps.push_back(std::move(step));
        }
        for (std::size_t i = 0; i < gradient_names.size(); ++i)
            direction.gradients.push_back(difference(gradient_names[i], fused.gradients[i], tape.gradients[i]));
        // The forward in the order the steps ran, then the backward in its order (from the last step).
        for (std::size_t k = 0; k < T; ++k) {
            const std::size_t t = reverse ? T - 1 - k : k;
            for (const auto& d : direction.steps[t].forward)
                if (!agrees(d, options.tolerance)) diverge("forward", reverse, t, d);
        }
        for (std::size_t k = T; k-- > 0;) {
            const std::size_t t = reverse ? T - 1 - k : k;
            for (const auto& d : direction.steps[t].backward)
                if (!agrees(d, options.tolerance)) diverge("backward", reverse, t, d);
        }
        for (const auto& d : direction.gradients)
            if (!agrees(d, options.tolerance)) diverge("gradients", reverse, 0, d);
        if (rules->has_tangent_rules()) {
            std::vector<Array> dy{data.out_weight};
            dy.insert(dy.end(), data.final_weight.begin(), data.final_weight.end());
            Generator directions(options.seed + (reverse ? 2 : 1));
            const std::string why = fused::detail::check_tangent_rules(cell, *rules, data.x, data.initial, data.lengths,
                                                                       reverse, dy, directions, direction.tangents);
            if (!why.empty()) report.tangents_note = "tangent rules not checked: " + why;
            for (const auto& d : direction.tangents)
                if (!agrees(d, options.tolerance)) diverge("tangents", reverse, 0, d);
        }
        report.directions.push_back(std::move(direction));
    }
    return report;
}

FusedCheckReport check_fused_cell(const CellFactory<double>& factory, std::size_t input_size, std::size_t hidden_size,
                                  const FusedCheckOptions& options) {
    if (!factory) throw std::invalid_argument("check_fused_cell: the cell factory is empty");
    Generator generator(options.seed);
    const std::shared_ptr<RecurrentCell<double>> cell = factory({.input_size = input_size, .hidden_size = hidden_size}, generator);
    if (!cell) throw std::invalid_argument("check_fused_cell: the cell factory made no cell (a null pointer)");
    return check_fused_cell(*cell, options);
}

std::string FusedCheckReport::to_string(bool per_step) const {
    std::string out;
    if (passed) out += fmt::format("fused rules agree with the tape (tolerance {:.0e} relative)\n", tolerance);
    else if (pass == "tangents")
        out += fmt::format("FAILED: {} direction, the tangent rules' sweeps give {} off by {:.3g} (largest |value| {:.3g})\n",
                           reverse ? "reverse" : "forward", tensor, difference, scale);
    else if (pass == "gradients")
        out += fmt::format("FAILED: {} direction, gradient of {} differs by {:.3g} (largest |value| {:.3g})\n",
                           reverse ? "reverse" : "forward", tensor, difference, scale);
    else
        out += fmt::format("FAILED: {} direction, the {} first diverges at time step {} in {} (by {:.3g}, largest |value| {:.3g})\n",
                           reverse ? "reverse" : "forward", pass, step, pass == "backward" ? "dL/d(" + tensor + ")" : tensor,
                           difference, scale);
    if (!gates_note.empty()) out += "note: " + gates_note + "\n";
    if (!tangents_note.empty()) out += "note: " + tangents_note + "\n";
    for (const auto& direction : directions) {
        out += fmt::format("{} direction\n", direction.reverse ? "reverse" : "forward");
        auto line = [&](const std::string& label, const std::vector<TensorDifference>& ds) {
            out += fmt::format("  {:<10}", label);
            for (const auto& d : ds) out += fmt::format(" {}={:.2e}", d.tensor, d.difference);
            out += "\n";
        };
        if (per_step) {
            for (const auto& step : direction.steps) {
                line(fmt::format("t={} fwd", step.step), step.forward);
                line(fmt::format("t={} bwd", step.step), step.backward);
            }
        } else {
            // The worst per tensor over the steps.
            std::vector<TensorDifference> forward = direction.steps.front().forward, backward = direction.steps.front().backward;
            for (const auto& step : direction.steps) {
                for (std::size_t i = 0; i < forward.size(); ++i)
                    forward[i].difference = std::max(forward[i].difference, step.forward[i].difference);
                for (std::size_t i = 0; i < backward.size(); ++i)
                    backward[i].difference = std::max(backward[i].difference, step.backward[i].difference);
            }
            line("forward", forward);
            line("backward", backward);
        }
        line("gradients", direction.gradients);
        if (!direction.tangents.empty()) line("tangents", direction.tangents);
    }
    return out;
}

}  // namespace rw::nn
