#include "rewind/nn/layers/layer_check.hpp"

#include <rewind/autograd/ops.hpp>

namespace rw::nn {

LayerCheck layer_check(Recurrent<double>& layer, const Tensor<double>& x, const std::vector<Tensor<double>>& initial_state,
                       const std::optional<std::vector<std::int64_t>>& lengths) {
    LayerCheck check;
    // The parameters are the layer's own handles, so the values gradcheck perturbs in place are
    // the ones forward() reads.
    for (const auto& [name, parameter] : layer.named_parameters()) {
        check.inputs.push_back(parameter);
        check.names.push_back(name);
    }
    const std::size_t first_data = check.inputs.size();
    check.inputs.push_back(x);
    check.names.push_back("x");
    const auto state_names = layer.state_names();
    for (std::size_t s = 0; s < initial_state.size(); ++s) {
        check.inputs.push_back(initial_state[s]);
        check.names.push_back(state_names.at(s) + "0");
    }
    check.function = [&layer, first_data, lengths](const std::vector<Tensor<double>>& in) {
        const std::vector<Tensor<double>> initial(in.begin() + std::ptrdiff_t(first_data) + 1, in.end());
        const auto result = layer.forward(in[first_data], initial, lengths);
        std::vector<Tensor<double>> parts{reshape(result.output, {result.output.size()})};
        for (const auto& state : result.state) parts.push_back(reshape(state, {state.size()}));
        return concat(parts, 0);
    };
    return check;
}

GradcheckReport gradcheck_layer(Recurrent<double>& layer, const Tensor<double>& x,
                                const std::vector<Tensor<double>>& initial_state,
                                const std::optional<std::vector<std::int64_t>>& lengths, const GradcheckOptions& options) {
    LayerCheck check = layer_check(layer, x, initial_state, lengths);
    return gradcheck(check.function, std::move(check.inputs), options, std::move(check.names));
}

}  // namespace rw::nn
