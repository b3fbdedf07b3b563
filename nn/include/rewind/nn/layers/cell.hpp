#pragma once
// The cell concept that the one layer machinery (recurrent.hpp) runs over time, layers and
// directions. A cell owns its parameters and maps (x_t, state) to the next state. The state is
// one tensor (RNN, GRU) or several (LSTM's h and c); state[0] is always the hidden state h,
// which is the cell's output and the next layer's input.
//
// A user's cell derives from RecurrentCell, registers its parameters and writes step() with
// ordinary ops; everything else (stacking, directions, lengths, initial states, dropout,
// truncated BPTT) comes from the layer.

#include <cstddef>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <typeinfo>
#include <type_traits>
#include <string>
#include <vector>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>
#include <rewind/autograd/tensor.hpp>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/module.hpp"

namespace rw::nn {

template <class T>
using State = std::vector<Tensor<T>>;

// One layer-direction run over the whole sequence.
template <class T>
struct SequenceResult {
    Tensor<T> output;      // [T, B, H]: each step's hidden state, zeros past a sequence's end (H: h's width)
    State<T> final_state;  // each [B, state_size(s)], taken at each sequence's own last step
};

template <class T>
class RecurrentCell : public Module<T> {
public:
    RecurrentCell(std::size_t input_size, std::size_t hidden_size)
        : input_size_(input_size), hidden_size_(hidden_size) {}

    std::size_t input_size() const { return input_size_; }
    std::size_t hidden_size() const { return hidden_size_; }
    // Names of the state tensors, e.g. {"h"} or {"h", "c"}; each is [batch, hidden_size].
    virtual std::vector<std::string> state_names() const { return {"h"}; }
    std::size_t state_count() const { return state_names().size(); }
    // The width of state tensor s ([batch, state_size(s)]): hidden_size unless the cell says
    // otherwise (an LSTM with proj_size: h has proj_size). state_size(0) is the output's width.
    virtual std::size_t state_size(std::size_t /*state*/) const { return hidden_size_; }

    // Work that does not depend on the state, done once for the whole sequence [T, B, I]
    // (typically the input projection, one large GEMM). The result's slice at step t is what
    // step() receives as x_t. The default passes the input through.
    virtual Tensor<T> prepare_input(const Tensor<T>& input) const { return input; }

    // One time step: x_t is row t of prepare_input()'s result, [B, *]; returns the next state.
    // For a step on raw input (x [B, input_size]) use forward_step().
    virtual State<T> step(const Tensor<T>& x_t, const State<T>& state) const = 0;

    // One step on raw input, as torch.nn.LSTMCell(x, (h, c)): x [B, input_size] and one
    // [B, hidden_size] tensor per state name in; the next state out. It runs prepare_input() on
    // this single step, then step(): what a decoder feeding back its own output calls per token.
    State<T> forward_step(const Tensor<T>& x, const State<T>& state) const;

    // The cell's hand-written fused rules (fused/cell_rules.hpp), or null: the layer's fused path
    // runs them through the library's sequence driver, one tape op per layer and direction.
    virtual const fused::CellRules<T>* fused_rules() const { return nullptr; }
    // Why fused_rules() is null, for Recurrent::path_note().
    virtual std::string why_no_fused_rules() const { return "the cell has no fused rules"; }

    // fused_rules() when they were written for exactly this cell's dynamic type, else null with
    // the reason in *why_not: a subclass that overrides step() never runs its parent's rules.
    const fused::CellRules<T>* usable_fused_rules(std::string* why_not = nullptr) const {
        const fused::CellRules<T>* rules = fused_rules();
        auto say = [&](std::string reason) {
            if (why_not) *why_not = std::move(reason);
            return nullptr;
        };
        if (!rules) return say(why_no_fused_rules());
        if (rules->rules_cell_type() != typeid(*this))
            return say("the cell's fused rules were written for its parent class, not for this subclass");
        if (why_not) why_not->clear();
        return rules;
    }

    // The cell's name in the table of cells (cell_table.hpp: "rnn_tanh", "lstm", ...), or empty
    // for a user's cell.
    virtual std::string kind() const { return {}; }

private:
    std::size_t input_size_;
    std::size_t hidden_size_;
};

template <class T>
State<T> RecurrentCell<T>::forward_step(const Tensor<T>& x, const State<T>& state) const {
    const std::string op = (kind().empty() ? std::string("recurrent cell") : kind()) + " forward_step";
    if (x.dim() != 2 || x.size(1) != input_size_)
        throw_wrong_shape(op, "input x", "[B, " + std::to_string(input_size_) + "] (input_size " +
                                             std::to_string(input_size_) + ")", x.shape());
    const std::size_t batch = x.size(0);
    const std::vector<std::string> names = state_names();
    if (state.size() != names.size())
        throw std::invalid_argument(op + ": " + std::to_string(state.size()) + " state tensors given, expected " +
                                    std::to_string(names.size()));
    for (std::size_t s = 0; s < names.size(); ++s)
        if (state[s].shape() != Shape{batch, hidden_size_})
            throw_wrong_shape(op, "state '" + names[s] + "'", Shape{batch, hidden_size_}, state[s].shape());
    const Tensor<T> prepared = prepare_input(reshape(x, {1, batch, input_size_}));
    return step(reshape(prepared, {batch, prepared.size() / batch}), state);
}

// The base of a cell with fused rules, its step() and its rules in one class: it supplies
// fused_rules() (this cell) and rules_cell_type() (exactly `Cell`), so a cell writes only the
// layout, the weights and the rules.
//     template <class T>
//     class MyCell : public rw::nn::FusedCell<MyCell<T>, T> { ... };
// `Base` is the cell class it extends (RecurrentCell<T>, or e.g. StandardCell<T> for PyTorch's
// four parameters); its constructors are inherited.
template <class Cell, class T, class Base = RecurrentCell<T>>
class FusedCell : public Base, public fused::CellRules<T> {
public:
    using Base::Base;
    const fused::CellRules<T>* fused_rules() const override { return this; }
    const std::type_info& rules_cell_type() const override { return typeid(Cell); }
};

// Where a layer is building a cell: the sizes the cell needs and which of the layer's cells it
// is, so that a factory can initialise layers differently (IndRNN's last layer, a forget-gate
// bias per layer, a reverse direction of its own).
struct CellSite {
    std::size_t input_size = 0;   // the layer's input, or D * H for the layers above the first
    std::size_t hidden_size = 0;
    std::size_t layer = 0;        // 0 .. num_layers - 1, bottom up
    std::size_t direction = 0;    // 0 forward, 1 reverse
    std::size_t num_layers = 1;
    std::size_t num_directions = 1;
    bool last_layer() const { return layer + 1 == num_layers; }
};

// Creates the cell of one layer and direction (the layer calls it once per site, layer-major,
// forward before reverse, drawing from the layer's generator):
//   CellFactory<float> factory = [](const CellSite& site, Generator& g) { return make_my_cell(site, g); };
template <class T>
class CellFactory {
public:
    using Make = std::function<std::shared_ptr<RecurrentCell<T>>(const CellSite& site, Generator& generator)>;

    CellFactory() = default;
    template <class F>
        requires std::is_invocable_v<const F&, const CellSite&, Generator&>
    CellFactory(F make) : make_(std::move(make)) {}
    // Migration: a factory of the earlier form (input_size, hidden_size, generator), which is not
    // told the layer or direction. Deprecated; it still builds the same cells.
    template <class F>
        requires(!std::is_invocable_v<const F&, const CellSite&, Generator&> &&
                 std::is_invocable_v<const F&, std::size_t, std::size_t, Generator&>)
    [[deprecated("a CellFactory takes (const rw::nn::CellSite&, rw::Generator&); the site also says the layer and direction")]]
    CellFactory(F make)
        : make_([make = std::move(make)](const CellSite& site, Generator& generator) {
              return make(site.input_size, site.hidden_size, generator);
          }) {}

    std::shared_ptr<RecurrentCell<T>> operator()(const CellSite& site, Generator& generator) const {
        if (!make_) throw std::invalid_argument("recurrent layer: empty cell factory");
        return make_(site, generator);
    }
    explicit operator bool() const { return bool(make_); }

private:
    Make make_;
};

}  // namespace rw::nn
