#include "rewind/nn/layers/recurrent.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/recompute.hpp>
#include <rewind/autograd/ops.hpp>

#include "rewind/nn/layers/cell_table.hpp"
#include "../fused/probe.hpp"

namespace rw::nn {

namespace {

// The most gates of a built-in cell (LSTM's four), for the size checks before a layer builds its
// cells or runs; a user's cell with more gates is still checked where its tensors are made.
constexpr std::size_t max_cell_gates = 4;

std::string parameter_suffix(std::size_t layer, std::size_t direction) {
    return fmt::format("_l{}{}", layer, direction == 1 ? "_reverse" : "");
}

}  // namespace

// Which sequences are still running at each step (PyTorch's packed-sequence semantics).
template <class T>
struct Recurrent<T>::Sequence {
    std::size_t steps = 0;
    std::size_t batch = 0;
    std::vector<std::int64_t> lengths;  // empty: every sequence runs all steps

    bool all_active(std::size_t step) const {
        for (auto length : lengths)
            if (std::int64_t(step) >= length) return false;
        return true;
    }
    // 1 for the rows whose sequence covers `step`, 0 past their end; [batch, width].
    xt::xarray<T> active_mask(std::size_t step, std::size_t width) const {
        xt::xarray<T> mask = xt::xarray<T>::from_shape({batch, width});
        for (std::size_t b = 0; b < batch; ++b)
            for (std::size_t j = 0; j < width; ++j) mask(b, j) = std::int64_t(step) < lengths[b] ? T(1) : T(0);
        return mask;
    }
};

template <class T>
Recurrent<T>::Recurrent(const CellFactory<T>& factory, const RecurrentOptions& options)
    : options_(options), generator_(options.seed) {
    if (options.num_layers == 0) throw std::invalid_argument("recurrent layer: num_layers must be at least 1");
    check_dropout(options.dropout);
    // Sizes derived from the options are checked before any cell multiplies them: the widest
    // weight is [gates * H, max(I, D * H)], and the layer's output rows are D * H wide.
    const std::size_t widest_input =
        std::max(options.input_size, checked_product("recurrent layer: hidden_size x directions", options.hidden_size,
                                                     num_directions()));
    checked_element_count("recurrent layer", {max_cell_gates, options.hidden_size, widest_input}, sizeof(T));
    checked_product("recurrent layer: num_layers x directions", options.num_layers, num_directions());
    const std::size_t output_size = options.proj_size > 0 ? options.proj_size : options.hidden_size;
    for (std::size_t layer = 0; layer < options.num_layers; ++layer) {
        const std::size_t layer_input = layer == 0 ? options.input_size : output_size * num_directions();
        for (std::size_t direction = 0; direction < num_directions(); ++direction) {
            auto cell = factory({.input_size = layer_input, .hidden_size = options.hidden_size, .layer = layer,
                                 .direction = direction, .num_layers = options.num_layers,
                                 .num_directions = num_directions()},
                                generator_);
            if (cell->state_size(0) != output_size)
                throw std::invalid_argument(fmt::format(
                    "recurrent layer: the {} cell's output has the wrong size: expected {} ({}), got {}{}",
                    cell->kind().empty() ? "user's" : cell->kind(), output_size,
                    options.proj_size > 0 ? "proj_size" : "hidden_size", cell->state_size(0),
                    options.proj_size > 0 ? " (proj_size is an LSTM option)" : ""));
            for (auto& [name, tensor] : cell->named_parameters())
                this->register_parameter(name + parameter_suffix(layer, direction), tensor);
            cells_.push_back(std::move(cell));
        }
    }
    if (options.initial_state == InitialState::learned) {
        for (std::size_t layer = 0; layer < options.num_layers; ++layer)
            for (std::size_t direction = 0; direction < num_directions(); ++direction) {
                std::vector<Tensor<T>> initial;
                for (std::size_t s = 0; s < state_names().size(); ++s)
                    initial.push_back(this->register_parameter(
                        "initial_" + state_names()[s] + parameter_suffix(layer, direction), Tensor<T>::zeros({state_size(s)})));
                learned_initial_.push_back(std::move(initial));
            }
    }
}

// PyTorch takes dropout in [0, 1] (1 zeroes the outputs between layers); NaN is refused, not
// read as 0 as a plain range test would.
template <class T>
void Recurrent<T>::check_dropout(double dropout) {
    if (!(dropout >= 0.0 && dropout <= 1.0))
        throw std::invalid_argument(
            fmt::format("recurrent layer: option 'dropout' must be a probability: expected a value in [0, 1], got {}", dropout));
}

template <class T>
void Recurrent<T>::set_dropout(double dropout) {
    check_dropout(dropout);
    options_.dropout = dropout;
}

template <class T>
const RecurrentCell<T>& Recurrent<T>::cell(std::size_t layer, std::size_t direction) const {
    return *cells_.at(layer * num_directions() + direction);
}

template <class T>
State<T> Recurrent<T>::initial_state_for(std::size_t layer, std::size_t direction, const std::vector<Tensor<T>>& given,
                                         std::size_t batch) const {
    const std::size_t index = layer * num_directions() + direction;
    State<T> state;
    for (std::size_t s = 0; s < state_names().size(); ++s) {
        const std::size_t hidden = state_size(s);
        if (!given.empty())
            state.push_back(reshape(slice(given[s], 0, index, index + 1), {batch, hidden}));
        else if (!learned_initial_.empty())
            state.push_back(broadcast_to(reshape(learned_initial_[index][s], {1, hidden}), {batch, hidden}));
        else
            state.push_back(Tensor<T>::zeros({batch, hidden}));
    }
    return state;
}

template <class T>
void Recurrent<T>::check_given_state(const std::vector<Tensor<T>>& given, std::size_t batch) const {
    if (given.empty()) return;
    if (given.size() != state_names().size())
        throw std::invalid_argument(fmt::format("recurrent layer: {} initial state tensors given, expected {} ({})",
                                                given.size(), state_names().size(), fmt::join(state_names(), ", ")));
    for (std::size_t s = 0; s < given.size(); ++s) {
        const Shape state_shape{options_.num_layers * num_directions(), batch, state_size(s)};
        if (given[s].shape() != state_shape)
            throw_wrong_shape("recurrent layer", fmt::format("initial state '{}'", state_names()[s]), state_shape,
                              given[s].shape());
    }
}

template <class T>
Tensor<T> Recurrent<T>::state_of(const Tensor<T>& stacked, std::size_t layer, std::size_t direction) const {
    const std::size_t count = options_.num_layers * num_directions();
    if (layer >= options_.num_layers || direction >= num_directions())
        throw std::out_of_range(fmt::format("recurrent layer: state_of(layer {}, direction {}) outside {} layer(s) and {} direction(s)",
                                            layer, direction, options_.num_layers, num_directions()));
    // h and c differ in width for an LSTM with proj_size: either state's width is accepted.
    bool known_width = false;
    for (std::size_t s = 0; s < state_names().size(); ++s) known_width = known_width || (stacked.dim() == 3 && stacked.size(2) == state_size(s));
    if (stacked.dim() != 3 || stacked.size(0) != count || !known_width)
        throw_wrong_shape("recurrent layer state_of", "the stacked state",
                          fmt::format("[{}, B, {}] (L*D, B, H)", count, state_size(0)), stacked.shape());
    const std::size_t index = layer * num_directions() + direction;
    return reshape(slice(stacked, 0, index, index + 1), {stacked.size(1), stacked.size(2)});
}

template <class T>
RecurrentResult<T> Recurrent<T>::step(const Tensor<T>& x, const std::vector<Tensor<T>>& state) {
    if (options_.bidirectional)
        throw std::logic_error("recurrent layer: step() needs a unidirectional layer (a reverse direction reads the "
                               "whole sequence); step one cell with cell(layer, direction).forward_step()");
    if (x.dim() != 2 || x.size(1) != options_.input_size)
        throw_wrong_shape("recurrent layer step", "input x", fmt::format("[B, {}] (input_size)", options_.input_size),
                          x.shape());
    const std::size_t batch = x.size(0);
    check_given_state(state, batch);
    std::vector<std::vector<Tensor<T>>> finals(state_names().size());
    Tensor<T> layer_input = x;
    for (std::size_t layer = 0; layer < options_.num_layers; ++layer) {
        const State<T> next = cells_[layer]->forward_step(layer_input, initial_state_for(layer, 0, state, batch));
        for (std::size_t s = 0; s < finals.size(); ++s) finals[s].push_back(next[s]);
        layer_input = next[0];
        if (layer + 1 < options_.num_layers && options_.dropout > 0)
            layer_input = dropout(layer_input, options_.dropout, this->is_training(), generator_);
    }
    RecurrentResult<T> result;
    result.output = layer_input;
    for (auto& per_layer : finals) result.state.push_back(stack(per_layer, 0));
    return result;
}

template <class T>
std::size_t Recurrent<T>::segment_for(const RecurrentCell<T>& cell, const Sequence& sequence) const {
    if (!options_.recompute.enabled || observer_ || probe_) return 0;
    // Bytes per step as the fused driver keeps them; the generic path keeps more per step, so a
    // budget sized this way is a lower bound there.
    const fused::CellRules<T>* rules = cell.fused_rules();
    std::size_t checkpoint = 0;
    for (std::size_t s = 0; s < state_names().size(); ++s) checkpoint += sequence.batch * cell.state_size(s) * sizeof(T);
    const std::size_t step =
        rules ? fused::saved_bytes_per_step(rules->layout(), sequence.batch, options_.hidden_size, sizeof(T), false,
                                            cell.state_size(0))
              : 0;
    return recompute_segment(options_.recompute, sequence.steps, step, checkpoint);
}

// Steps k0..k1-1 (in the direction's order) of the generic path; prepared[t - first_t] is step
// t's prepared input, outputs[t - first_t] receives its output.
template <class T>
State<T> Recurrent<T>::run_steps(const RecurrentCell<T>& cell, const std::vector<Tensor<T>>& prepared, std::size_t first_t,
                                 State<T> state, const Sequence& sequence, std::size_t layer, std::size_t direction,
                                 std::size_t k0, std::size_t k1, std::vector<Tensor<T>>& outputs,
                                 const StepProbe<T>* probe, const StepObserver<T>* observer) {
    for (std::size_t i = k0; i < k1; ++i) {
        const std::size_t t = direction == 0 ? i : sequence.steps - 1 - i;
        State<T> next = cell.step(prepared[t - first_t], state);
        if (next.size() != state.size())
            throw std::logic_error(fmt::format("recurrent cell returned {} state tensors, expected {}", next.size(), state.size()));
        if (probe && *probe) next[0] = (*probe)(layer, direction, t, next[0]);
        Tensor<T> output = next[0];
        if (!sequence.all_active(t)) {
            // Finished sequences keep their state (so h_n is taken at each one's own last step) and
            // output zeros; in the reverse direction a sequence starts at its own last step.
            for (std::size_t s = 0; s < next.size(); ++s) {
                const xt::xarray<T> mask = sequence.active_mask(t, cell.state_size(s));
                next[s] = add(state[s], mul_mask(sub(next[s], state[s]), mask));
            }
            output = mul_mask(next[0], sequence.active_mask(t, cell.state_size(0)));
        }
        state = std::move(next);
        if (observer && *observer) (*observer)(layer, direction, t, state[0]);
        outputs[t - first_t] = output;
    }
    return state;
}

// The generic path with recomputation: each segment of steps is one checkpoint op, whose backward
// reruns the segment's steps (from its input rows, its initial states and the cell's parameters).
// The op's backward may run after the layer and this forward's locals are gone: the rerun holds
// the cell and a copy of the sequence's lengths itself.
template <class T>
SequenceResult<T> Recurrent<T>::run_segments(std::size_t layer, std::size_t direction, const Tensor<T>& input,
                                             State<T> state, const Sequence& sequence, std::size_t segment) const {
    const std::shared_ptr<RecurrentCell<T>> cell = cells_[layer * num_directions() + direction];
    const std::size_t S = state.size(), T_ = sequence.steps;
    const std::vector<Tensor<T>> parameters = cell->parameters();
    std::vector<Tensor<T>> pieces;  // segment outputs, in processing order
    for (std::size_t k0 = 0; k0 < T_; k0 += segment) {
        const std::size_t k1 = std::min(T_, k0 + segment);
        const std::size_t first_t = direction == 0 ? k0 : T_ - k1;
        CheckpointFn<T> steps = [cell, sequence, layer, direction, k0, k1, first_t, S](const std::vector<Tensor<T>>& in) {
            const std::vector<Tensor<T>> prepared = unstack(cell->prepare_input(in[S]), 0);
            std::vector<Tensor<T>> outputs(k1 - k0);
            State<T> last = run_steps(*cell, prepared, first_t, State<T>(in.begin(), in.begin() + S), sequence, layer,
                                      direction, k0, k1, outputs);
            std::vector<Tensor<T>> results{stack(outputs, 0)};
            results.insert(results.end(), last.begin(), last.end());
            return results;
        };
        std::vector<Tensor<T>> inputs(state.begin(), state.end());
        inputs.push_back(slice(input, 0, first_t, first_t + (k1 - k0)));
        std::vector<Tensor<T>> results =
            rw::checkpoint<T>(fmt::format("{}_l{}_steps_{}_{}", cell->kind().empty() ? "cell" : cell->kind(), layer, k0, k1),
                          steps, inputs, parameters);
        pieces.push_back(results[0]);
        state.assign(results.begin() + 1, results.end());
    }
    if (direction == 1) std::reverse(pieces.begin(), pieces.end());
    return {concat(pieces, 0), std::move(state)};
}

template <class T>
SequenceResult<T> Recurrent<T>::run_direction(const RecurrentCell<T>& cell, const Tensor<T>& input, State<T> state,
                                              const Sequence& sequence, std::size_t layer, std::size_t direction) {
    const std::size_t segment = segment_for(cell, sequence);
    last_segment_ = std::max(last_segment_, segment);
    if (options_.path == ExecutionPath::fused) {
        std::string why_not = observer_ ? "a step observer needs every step on the tape"
                                        : "a step probe needs every step on the tape";
        const fused::CellRules<T>* rules = (observer_ || probe_) ? nullptr : cell.usable_fused_rules(&why_not);
        if (rules) {
            const std::shared_ptr<RecurrentCell<T>> held = cells_[layer * num_directions() + direction];
            // The op's replay (fused/cell_rules.hpp): these steps on the generic path, (x, initial states...)
            // to (output, final states...), for its rules beyond first order. Like run_segments' reruns
            // it may run after the layer is gone, so it holds the cell and the lengths; it keeps every
            // step on its graph, also when the layer recomputes.
            fused::SequenceReplay<T> replay = [held, sequence, layer, direction](const std::vector<Tensor<T>>& in) {
                const std::vector<Tensor<T>> prepared = unstack(held->prepare_input(in[0]), 0);
                std::vector<Tensor<T>> outputs(sequence.steps);
                State<T> last = run_steps(*held, prepared, 0, State<T>(in.begin() + 1, in.end()), sequence, layer, direction,
                                          0, sequence.steps, outputs);
                std::vector<Tensor<T>> results{stack(outputs, 0)};
                results.insert(results.end(), last.begin(), last.end());
                return results;
            };
            // The cell's shared_ptr keeps its rules alive for the op's backward, even past the layer.
            return fused::detail::run_sequence_probed<T>(*rules, input, state, sequence.lengths, direction == 1, cell.kind(),
                                                      nullptr, held, segment, std::move(replay));
        }
        if (path_note_.empty()) path_note_ = fmt::format("layer {} direction {}: {}", layer, direction, why_not);
    }
    last_fused_ = false;
    if (segment > 0) return run_segments(layer, direction, input, std::move(state), sequence, segment);
    // One node for all steps: its backward stacks the step gradients once, where a slice per
    // step would zero-pad each gradient to the whole sequence.
    const std::vector<Tensor<T>> prepared = unstack(cell.prepare_input(input), 0);
    std::vector<Tensor<T>> outputs(sequence.steps);
    state = run_steps(cell, prepared, 0, std::move(state), sequence, layer, direction, 0, sequence.steps, outputs, &probe_,
                      &observer_);
    return {stack(outputs, 0), std::move(state)};
}

template <class T>
RecurrentResult<T> Recurrent<T>::forward(const Tensor<T>& input, const std::vector<Tensor<T>>& initial_state,
                                         const std::optional<std::vector<std::int64_t>>& lengths) {
    if (input.dim() != 3)
        throw_shape_error("recurrent layer", "expects a 3-D input [T, B, input_size]", input.shape());
    Tensor<T> layer_input = options_.batch_first ? permute(input, {1, 0, 2}) : input;
    Sequence sequence{layer_input.size(0), layer_input.size(1), {}};
    if (layer_input.size(2) != options_.input_size)
        throw_shape_error("recurrent layer", fmt::format("input size differs from input_size {}", options_.input_size),
                          input.shape());
    // A batch of 0 sequences is PyTorch's too (an empty shard, a filtered last batch): the output
    // is [T, 0, D*H] and backward works; steps are not optional.
    if (sequence.steps == 0) throw_shape_error("recurrent layer", "needs at least one step", input.shape());

    const std::size_t directions = num_directions();
    // Checked here, before any path sizes its buffers from them: the output [T, B, D*H] and the
    // cells' per-step gate pre-activations [T, B, gates*H].
    checked_element_count("recurrent layer",
                          {sequence.steps, sequence.batch, max_cell_gates * directions, options_.hidden_size}, sizeof(T));
    check_given_state(initial_state, sequence.batch);
    if (lengths) {
        if (lengths->size() != sequence.batch)
            throw std::invalid_argument(fmt::format("recurrent layer: {} lengths given for a batch of {}", lengths->size(),
                                                    sequence.batch));
        for (std::size_t b = 0; b < lengths->size(); ++b) {
            const auto length = (*lengths)[b];
            if (length < 1 || length > std::int64_t(sequence.steps))
                throw std::invalid_argument(fmt::format(
                    "recurrent layer: length {} of sequence {} is outside 1..{} (the number of steps)", length, b,
                    sequence.steps));
        }
        sequence.lengths = *lengths;
    }

    last_fused_ = options_.path == ExecutionPath::fused;
    last_segment_ = 0;
    path_note_.clear();
    std::vector<std::vector<Tensor<T>>> finals(state_names().size());
    for (std::size_t layer = 0; layer < options_.num_layers; ++layer) {
        std::vector<Tensor<T>> direction_outputs;
        for (std::size_t direction = 0; direction < directions; ++direction) {
            const auto& cell = *cells_[layer * directions + direction];
            auto result = run_direction(cell, layer_input, initial_state_for(layer, direction, initial_state, sequence.batch),
                                        sequence, layer, direction);
            direction_outputs.push_back(result.output);
            for (std::size_t s = 0; s < finals.size(); ++s) finals[s].push_back(result.final_state[s]);
        }
        layer_input = directions == 1 ? direction_outputs[0] : concat(direction_outputs, 2);
        if (layer + 1 < options_.num_layers && options_.dropout > 0)
            layer_input = dropout(layer_input, options_.dropout, this->is_training(), generator_);
    }
    RecurrentResult<T> result;
    result.output = options_.batch_first ? permute(layer_input, {1, 0, 2}) : layer_input;
    for (auto& per_layer : finals) result.state.push_back(stack(per_layer, 0));
    return result;
}

// ---- the standard layers ----

template <class T>
std::shared_ptr<Recurrent<T>> make_rnn(const RecurrentOptions& options, Nonlinearity nonlinearity) {
    CellInit init = options.init;
    CellOptions cell_options = options.cell_options();
    return std::make_shared<Recurrent<T>>(
        [nonlinearity, init, cell_options](const CellSite& site, Generator& generator) {
            return std::make_shared<RNNCell<T>>(site.input_size, site.hidden_size, nonlinearity, generator, init, cell_options);
        },
        options);
}

template <class T>
std::shared_ptr<Recurrent<T>> make_lstm(const RecurrentOptions& options) {
    CellInit init = options.init;
    CellOptions cell_options = options.cell_options();
    return std::make_shared<Recurrent<T>>(
        [init, cell_options](const CellSite& site, Generator& generator) {
            return std::make_shared<LSTMCell<T>>(site.input_size, site.hidden_size, generator, init, cell_options);
        },
        options);
}

template <class T>
std::shared_ptr<Recurrent<T>> make_gru(const RecurrentOptions& options) {
    CellInit init = options.init;
    CellOptions cell_options = options.cell_options();
    return std::make_shared<Recurrent<T>>(
        [init, cell_options](const CellSite& site, Generator& generator) {
            return std::make_shared<GRUCell<T>>(site.input_size, site.hidden_size, generator, init, cell_options);
        },
        options);
}

template <class T>
std::shared_ptr<Recurrent<T>> make_recurrent(const std::string& cell, const RecurrentOptions& options) {
    return std::make_shared<Recurrent<T>>(cell_factory<T>(cell, options.init, options.cell_options()), options);
}

template class Recurrent<float>;
template class Recurrent<double>;
template std::shared_ptr<Recurrent<float>> make_rnn(const RecurrentOptions&, Nonlinearity);
template std::shared_ptr<Recurrent<double>> make_rnn(const RecurrentOptions&, Nonlinearity);
template std::shared_ptr<Recurrent<float>> make_lstm(const RecurrentOptions&);
template std::shared_ptr<Recurrent<double>> make_lstm(const RecurrentOptions&);
template std::shared_ptr<Recurrent<float>> make_gru(const RecurrentOptions&);
template std::shared_ptr<Recurrent<double>> make_gru(const RecurrentOptions&);
template std::shared_ptr<Recurrent<float>> make_recurrent(const std::string&, const RecurrentOptions&);
template std::shared_ptr<Recurrent<double>> make_recurrent(const std::string&, const RecurrentOptions&);

}  // namespace rw::nn
