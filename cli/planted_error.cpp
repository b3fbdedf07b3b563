#include "planted_error.hpp"

#include <rewind/autograd/function.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/nn/layers/cell_table.hpp>

namespace rw::cli {

namespace {

constexpr double kPlantedFactor = 1.01;

// Identity forward; a backward off by 1%.
Tensor<double> wrong_backward(const Tensor<double>& h) {
    return record_op<double>("planted_error", {h}, h.value(), [](const BackwardContext<double>& context) -> Gradients<double> {
        return {context.grad_output(0) * kPlantedFactor};
    });
}

// A cell's step() does not know t, so the wrapper appends t to each step's prepared input as one
// constant column and takes it off again before the wrapped cell's step().
class PlantedErrorCell : public nn::RecurrentCell<double> {
public:
    PlantedErrorCell(std::shared_ptr<nn::RecurrentCell<double>> inner, std::size_t step)
        : nn::RecurrentCell<double>(inner->input_size(), inner->hidden_size()), inner_(std::move(inner)), step_(step) {
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
        if (t == step_) next[0] = wrong_backward(next[0]);
        return next;
    }

private:
    std::shared_ptr<nn::RecurrentCell<double>> inner_;
    std::size_t step_;
};

}  // namespace

std::shared_ptr<nn::Recurrent<double>> make_layer_with_planted_error(const std::string& cell,
                                                                     const nn::RecurrentOptions& options,
                                                                     std::size_t step) {
    // The layer calls the factory for layer 0's forward direction first; the same draws from the
    // generator as make_recurrent, so the weights are the same as without the planted error.
    auto calls = std::make_shared<std::size_t>(0);
    nn::CellFactory<double> factory = [base = nn::cell_factory<double>(cell, options.init, options.cell_options()), calls, step](
                                          std::size_t input_size, std::size_t hidden_size,
                                          Generator& generator) -> std::shared_ptr<nn::RecurrentCell<double>> {
        auto made = base(input_size, hidden_size, generator);
        if ((*calls)++ > 0) return made;
        return std::make_shared<PlantedErrorCell>(std::move(made), step);
    };
    return std::make_shared<nn::Recurrent<double>>(factory, options);
}

}  // namespace rw::cli
