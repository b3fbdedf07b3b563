// rewind grad: replays one recurrent layer on given weights and inputs and writes its outputs
// and the gradients of sum(output*grad_output) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n), under
// the names PyTorch's reference fixtures use.

#include <memory>

#include <rewind/autograd/engine.hpp>
#include <rewind/nn/io/state_dict.hpp>

#include "grad_inputs.hpp"

namespace rw::cli {

namespace {

template <class T>
class GradRun {
public:
    GradRun(const GradRequest& request, const GradData& data) : request_(request), data_(data) {}

    nn::TensorMap operator()() {
        const LayerConfig& config = request_.layer;
        auto layer = nn::make_recurrent<T>(config.cell, config.recurrent_options());
        choose_path(*layer, paths_of(request_.path).front());
        nn::load_state_dict(*layer, data_.state, request_.state_file.string(), /*strict=*/true);

        const Tensor<T> x = leaf("x"), h0 = leaf("h0"), c0 = leaf("c0");
        const auto result = layer->forward(x, initial_state(h0, c0), data_.lengths);

        // The loss is never formed: each output is a root seeded with its weight in the sum.
        std::vector<Tensor<T>> roots{result.output}, seeds{constant("grad_output")};
        const std::vector<std::pair<std::string, std::size_t>> seeded_states{{"grad_h_n", 0}, {"grad_c_n", 1}};
        for (const auto& [seed, index] : seeded_states)
            if (data_.has(seed)) {
                roots.push_back(result.state.at(index));
                seeds.push_back(constant(seed));
            }
        rw::backward(roots, seeds);

        nn::TensorMap out{{"output", result.output.value()}, {"h_n", result.h_n().value()}};
        if (config.has_cell_state()) out.emplace("c_n", result.c_n().value());
        out.emplace("grad.x", gradient(x));
        if (h0.defined()) out.emplace("grad.h0", gradient(h0));
        if (c0.defined()) out.emplace("grad.c0", gradient(c0));
        for (const auto& [name, parameter] : layer->named_parameters()) out.emplace("grad." + name, gradient(parameter));
        return out;
    }

private:
    xt::xarray<T> array(const std::string& name) const { return std::get<xt::xarray<T>>(data_.inputs.at(name)); }
    Tensor<T> constant(const std::string& name) const { return Tensor<T>(array(name)); }
    // An input we differentiate with respect to, or undefined when INPUTS does not hold it.
    Tensor<T> leaf(const std::string& name) const {
        return data_.has(name) ? Tensor<T>(array(name), /*requires_grad=*/true) : Tensor<T>();
    }

    // As in PyTorch, a missing h0 or c0 of an LSTM is zeros (and gets no gradient).
    std::vector<Tensor<T>> initial_state(const Tensor<T>& h0, const Tensor<T>& c0) const {
        if (!h0.defined() && !c0.defined()) return {};
        // h0 and c0 differ only in their last size (proj_size against hidden_size).
        Shape shape = nn::shape_of(data_.inputs.at(h0.defined() ? "h0" : "c0"));
        const LayerConfig& config = request_.layer;
        auto zeros = [&](std::size_t width) {
            shape.back() = width;
            return Tensor<T>::zeros(shape);
        };
        std::vector<Tensor<T>> state{h0.defined() ? h0 : zeros(config.output_size())};
        if (config.has_cell_state()) state.push_back(c0.defined() ? c0 : zeros(config.hidden_size));
        return state;
    }

    // A tensor no gradient reached (e.g. unused by the seeded outputs) gets zeros.
    static xt::xarray<T> gradient(const Tensor<T>& leaf) {
        const Tensor<T> grad = leaf.grad();
        return grad.defined() ? grad.value() : xt::xarray<T>(xt::zeros<T>(leaf.shape()));
    }

    const GradRequest& request_;
    const GradData& data_;
};

int run_grad(const GradRequest& request) {
    apply_threads(request.threads);
    const GradData data = load_grad_data(request);
    const nn::TensorMap out = data.dtype == "F32" ? GradRun<float>(request, data)() : GradRun<double>(request, data)();
    // Only now, with everything computed: save_safetensors replaces OUT atomically.
    nn::save_safetensors(request.out_file, out);
    return 0;
}

}  // namespace

Command add_grad_command(CLI::App& app) {
    auto request = std::make_shared<GradRequest>();
    CLI::App* command = app.add_subcommand("grad", "replay one recurrent layer and write its outputs and gradients");
    add_layer_options(*command, request->layer);
    add_structure_options(*command, request->layer);
    command->add_option("--state", request->state_file, "parameters under PyTorch's names (safetensors)")
        ->type_name("FILE")
        ->required();
    command->add_option("--inputs", request->inputs_file, "x, grad_output and optional h0, c0, lengths, grad_h_n, grad_c_n")
        ->type_name("FILE")
        ->required();
    command->add_option("--out", request->out_file, "where to write outputs and gradients (safetensors)")
        ->type_name("FILE")
        ->required();
    add_path_option(*command, request->path, /*allow_both=*/false);
    command->add_flag("--check-finite", request->check_finite,
                      "refuse NaN or Inf in INPUTS or STATE (without it: a warning naming the tensor)");
    add_threads_option(*command, request->threads);
    return {command, [request] { return run_grad(*request); }};
}

}  // namespace rw::cli
