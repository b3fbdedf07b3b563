#include "planted_error.hpp"

#include <rewind/autograd/function.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/nn/layers/cell_table.hpp>

namespace rw::cli {

namespace {

constexpr double kPlantedFactor = 1.01;

// The identity's tangent, or (for the planted forward-mode error) 1% off.
ForwardRule<double> tangent_times(double factor) {
    return [factor](const ForwardContext<double>& context) -> std::vector<Tensor<double>> {
        if (!context.has_tangent(0)) return {Tensor<double>()};
        return {context.tangent(0) * factor};
    };
}

// Identity forward; a backward off by 1%.
Tensor<double> wrong_backward(const Tensor<double>& h) {
    return record_op<double>(
        "planted_error", {h}, h.value(),
        [](const BackwardContext<double>& context) -> Gradients<double> { return {context.grad_output(0) * kPlantedFactor}; },
        tangent_times(1.0));
}

// Identity forward and backward; a forward-mode rule off by 1%.
Tensor<double> wrong_tangent(const Tensor<double>& h) {
    return record_op<double>(
        "planted_error", {h}, h.value(),
        [](const BackwardContext<double>& context) -> Gradients<double> { return {context.grad_output(0)}; },
        tangent_times(kPlantedFactor));
}

// Identity forward whose backward g -> g is right in value, but recorded (create_graph) as
// g + 0.01 g (h - h'), h' a constant copy of h: zero, with the derivative 0.01 g with respect to h
// where the identity's backward has none.
Tensor<double> wrong_second_order(const Tensor<double>& h) {
    return record_op<double>("planted_error", {h}, h.value(), [](const BackwardContext<double>& context) -> Gradients<double> {
        const Tensor<double>& g = context.grad_output(0);
        if (!context.create_graph()) return {g};
        const Tensor<double>& input = context.input(0);
        const Tensor<double> frozen(input.value());
        return {g + g * (input - frozen) * (kPlantedFactor - 1)};
    }, tangent_times(1.0));
}

// A cell's step() does not know t, so the wrapper appends t to each step's prepared input as one
// constant column and takes it off again before the wrapped cell's step().
class PlantedErrorCell : public nn::RecurrentCell<double> {
public:
    PlantedErrorCell(std::shared_ptr<nn::RecurrentCell<double>> inner, std::size_t step, PlantedError kind)
        : nn::RecurrentCell<double>(inner->input_size(), inner->hidden_size()), inner_(std::move(inner)), step_(step),
          kind_(kind) {
        for (const auto& [name, parameter] : inner_->named_parameters()) register_parameter(name, parameter);
    }
    std::vector<std::string> state_names() const override { return inner_->state_names(); }
    std::size_t state_size(std::size_t state) const override { return inner_->state_size(state); }

    Tensor<double> prepare_input(const Tensor<double>& input) const override {
        const Tensor<double> prepared = inner_->prepare_input(input);
        const std::size_t steps = prepared.size(0), batch = prepared.size(1);
        xt::xarray<double> time = xt::xarray<double>::from_shape({steps, batch, std::size_t(1)});
        for (std::size_t t = 0; t < steps; ++t)
            for (std::size_t b = 0; b < batch; ++b) time(t, b, 0) = double(t);
        return concat<double>({prepared, Tensor<double>(std::move(time))}, 2);
    }

    nn::State<double> step(const Tensor<double>& x_t, const nn::State<double>& state) const override {
        const std::size_t width = x_t.size(1) - 1;
        const auto t = std::size_t(x_t.value()(0, width));
        nn::State<double> next = inner_->step(slice(x_t, 1, 0, width), state);
        if (t == step_)
            next[0] = kind_ == PlantedError::backward ? wrong_backward(next[0])
                      : kind_ == PlantedError::jvp    ? wrong_tangent(next[0])
                                                      : wrong_second_order(next[0]);
        return next;
    }

private:
    std::shared_ptr<nn::RecurrentCell<double>> inner_;
    std::size_t step_;
    PlantedError kind_;
};

}  // namespace

std::shared_ptr<nn::Recurrent<double>> make_layer_with_planted_error(const std::string& cell,
                                                                     const nn::RecurrentOptions& options,
                                                                     std::size_t step, PlantedError kind) {
    // The layer calls the factory for layer 0's forward direction first; the same draws from the
    // generator as make_recurrent, so the weights are the same as without the planted error.
    auto calls = std::make_shared<std::size_t>(0);
    nn::CellFactory<double> factory = [base = nn::cell_factory<double>(cell, options.init, options.cell_options()), calls, step,
                                       kind](
                                          const nn::CellSite& site,
                                          Generator& generator) -> std::shared_ptr<nn::RecurrentCell<double>> {
        auto made = base(site, generator);
        if ((*calls)++ > 0) return made;
        return std::make_shared<PlantedErrorCell>(std::move(made), step, kind);
    };
    return std::make_shared<nn::Recurrent<double>>(factory, options);
}

}  // namespace rw::cli
