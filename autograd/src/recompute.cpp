#include "rewind/autograd/recompute.hpp"

#include <fmt/format.h>

#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/function.hpp"

namespace rw {

template <class T>
std::vector<Tensor<T>> checkpoint(const std::string& name, const CheckpointFn<T>& fn, const std::vector<Tensor<T>>& inputs,
                                  const std::vector<Tensor<T>>& parameters) {
    for (std::size_t p = 0; p < parameters.size(); ++p)
        if (!parameters[p].is_leaf())
            throw std::invalid_argument(fmt::format(
                "checkpoint '{}': parameter {} is not a leaf (it was computed by '{}'); pass it among the inputs", name, p,
                parameters[p].grad_fn()->name()));
    std::vector<Tensor<T>> outputs;
    {
        // Tangents, if any, come from the forward rule below, which reruns fn for them.
        NoGradGuard no_grad;
        ForwardModeGuard no_tangents(false);
        outputs = fn(inputs);
    }
    std::vector<xt::xarray<T>> values;
    for (const auto& output : outputs) values.push_back(output.value());
    std::vector<Tensor<T>> op_inputs = inputs;
    op_inputs.insert(op_inputs.end(), parameters.begin(), parameters.end());

    auto rerun = [fn, name, count = inputs.size()](const BackwardContext<T>& ctx) -> Gradients<T> {
        if (ctx.create_graph())
            throw GraphError(fmt::format("backward of checkpoint '{}' with create_graph=true: the rerun's graph is "
                                         "differentiated inside this backward and cannot be differentiated again",
                                         name));
        // Detached inputs: the rerun's backward stops at them instead of walking into the graph
        // that made them, which the outer pass is still running.
        // Forward-over-reverse: a fresh input carries its original's tangent, so the rerun's
        // backward returns gradients that carry theirs (the parameters are read as they are).
        std::vector<Tensor<T>> fresh;
        for (std::size_t i = 0; i < count; ++i) {
            fresh.push_back(ctx.input(i).detach().set_requires_grad(ctx.needs_input_grad(i)));
            if (ctx.input(i).has_tangent()) fresh.back().set_tangent(ctx.input(i).tangent());
        }
        EnableGradGuard recording(true);
        const std::vector<Tensor<T>> again = fn(fresh);
        std::vector<Tensor<T>> roots, seeds, targets;
        std::vector<std::size_t> target_index;
        for (std::size_t o = 0; o < again.size(); ++o)
            if (ctx.has_grad_output(o) && again[o].requires_grad()) {
                roots.push_back(again[o]);
                seeds.push_back(ctx.grad_output(o));
            }
        for (std::size_t i = 0; i < ctx.num_inputs(); ++i)
            if (ctx.needs_input_grad(i)) {
                targets.push_back(i < count ? fresh[i] : ctx.input(i));
                target_index.push_back(i);
            }
        Gradients<T> gradients(ctx.num_inputs());
        if (roots.empty() || targets.empty()) return gradients;
        const std::vector<Tensor<T>> found = grad(roots, targets, seeds);
        for (std::size_t j = 0; j < found.size(); ++j) gradients[target_index[j]] = found[j];
        return gradients;
    };
    // The JVP reruns fn with forward mode back on, over dual copies of the inputs; the parameters'
    // own tangents are read by fn directly. Recording stays off (the rule runs without grad mode).
    auto forward = [fn, count = inputs.size()](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> {
        ForwardModeGuard tangents_on(true);
        std::vector<Tensor<T>> duals;
        for (std::size_t i = 0; i < count; ++i) {
            duals.push_back(ctx.input(i).detach());
            if (ctx.has_tangent(i)) duals.back().set_tangent(ctx.tangent(i));
        }
        const std::vector<Tensor<T>> again = fn(duals);
        std::vector<Tensor<T>> tangents;
        for (const auto& output : again) tangents.push_back(output.tangent());
        return tangents;
    };
    return record_op<T>("checkpoint_" + name, std::move(op_inputs), std::move(values), std::move(rerun), std::move(forward));
}

template std::vector<Tensor<float>> checkpoint(const std::string&, const CheckpointFn<float>&,
                                               const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&);
template std::vector<Tensor<double>> checkpoint(const std::string&, const CheckpointFn<double>&,
                                                const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&);

}  // namespace rw
