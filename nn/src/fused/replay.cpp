// The fused op's second-order rule by differentiating the layer's replay on a private graph
// (Note [Second order through the fused op], replay.hpp).

#include "replay.hpp"

#include <fmt/format.h>

#include <rewind/autograd/engine.hpp>
#include <rewind/autograd/errors.hpp>

namespace rw::nn::fused::replay {

template <class T>
std::string ReplayOp<T>::input_name(std::size_t i) const {
    const int k = int(i);
    if (k == index.x) return "x (the input)";
    if (k == index.weight_ih) return "weight_ih";
    if (k == index.bias_ih) return "bias_ih";
    if (k == index.weight_hh) return "weight_hh";
    if (k == index.bias_hh) return "bias_hh";
    if (k == index.weight_second) return "the second-stage weight";
    if (k == index.weight_projection) return "weight_hr (the projection)";
    if (k >= index.states) return fmt::format("initial state {}", k - index.states);
    return fmt::format("unit {}", k - index.units);
}

namespace {

template <class T>
void require_replay(const ReplayOp<T>& op) {
    if (!op.replay)
        throw GraphError(fmt::format(
            "backward of '{}' with create_graph=true: the fused op's second-order rule differentiates a replay of "
            "the sequence with the cell's generic step(), which a layer (rw::nn::Recurrent) supplies; this "
            "fused::run_sequence call was given none (its last argument). Run the cell through a Recurrent layer, "
            "pass a replay, or use the generic path (layer.set_path(rw::nn::ExecutionPath::generic)), for "
            "higher-order gradients",
            op.op));
}

// The replay reads the cell's weights itself, so the weights the op was given must be those very
// tensors: a computed one (a slice of a parameter, say) would be a different tensor than the one
// the replay's graph reaches.
template <class T>
void require_leaf_weights(const ReplayOp<T>& op, const std::vector<Tensor<T>>& inputs) {
    for (std::size_t i = 0; i < op.inputs; ++i)
        if (!op.replayed(i) && (inputs[i].requires_grad() || inputs[i].has_tangent()) && !inputs[i].is_leaf())
            throw GraphError(fmt::format(
                "'{}': the second-order and forward-mode rules need weight input '{}' to be a leaf (a parameter the "
                "replay reads), but it was computed by '{}'; the cell's weights() must hand the driver its parameter "
                "tensors themselves, or run the layer on the generic path (layer.set_path(rw::nn::ExecutionPath::generic))",
                op.op, op.input_name(i), inputs[i].grad_fn()->name()));
}

// A weight leaf that must be differentiated but does not require a gradient (a frozen one given
// a tangent) requires one while the private graph lives.
template <class T>
class RequiringGrad {
public:
    void require(Tensor<T> leaf) {
        if (leaf.requires_grad()) return;
        leaf.set_requires_grad(true);
        leaves_.push_back(std::move(leaf));
    }
    ~RequiringGrad() {
        for (auto& leaf : leaves_) leaf.set_requires_grad(false);
    }

private:
    std::vector<Tensor<T>> leaves_;
};

}  // namespace

template <class T>
Directional<T> directional(const ReplayOp<T>& op, const std::vector<Tensor<T>>& inputs,
                           const std::vector<Tensor<T>>& grad_outputs, const std::vector<Tensor<T>>& v,
                           const std::vector<Tensor<T>>& u, bool want_jvp, const std::vector<bool>& want_gradients) {
    const std::size_t n = op.inputs, m = op.outputs;
    Directional<T> result{std::vector<Tensor<T>>(m), std::vector<Tensor<T>>(n)};
    if (op.sweeps && op.sweeps(inputs, grad_outputs, v, u, want_jvp, want_gradients, result)) return result;
    require_replay(op);
    require_leaf_weights(op, inputs);

    // The private graph's leaves: detached copies of x and the initial states (so no pass walks
    // into the graph that made them), the cell's own parameters, detached copies of dy. Its ops
    // carry no tangents (the parameters may: rw::hvp_leaves puts them there).
    ForwardModeGuard no_tangents(false);
    EnableGradGuard recording(true);
    RequiringGrad<T> requiring;
    std::vector<Tensor<T>> theta(n);
    for (std::size_t i = 0; i < n; ++i) {
        if (op.replayed(i)) {
            theta[i] = inputs[i].detach().set_requires_grad(true);
        } else {
            theta[i] = inputs[i];
            if (v[i].defined() || want_gradients[i]) requiring.require(theta[i]);
        }
    }
    std::vector<Tensor<T>> arguments{theta[op.index.x]};
    for (std::size_t i = std::size_t(op.index.states); i < n; ++i) arguments.push_back(theta[i]);
    const std::vector<Tensor<T>> outs = op.replay(arguments);
    if (outs.size() != m)
        throw std::logic_error(fmt::format("'{}': the replay returned {} tensors, expected {} (the output and the final "
                                           "states)", op.op, outs.size(), m));
    std::vector<Tensor<T>> dy(m), roots, seeds;
    for (std::size_t o = 0; o < m; ++o) {
        if (grad_outputs[o].defined() && grad_outputs[o].shape() != outs[o].shape())
            throw std::logic_error(fmt::format("'{}': the replay's output {} has shape {}, the op's {}", op.op, o,
                                               shape_string(outs[o].shape()), shape_string(grad_outputs[o].shape())));
        dy[o] = (grad_outputs[o].defined() ? grad_outputs[o].detach() : Tensor<T>::zeros(outs[o].shape()))
                    .set_requires_grad(true);
        if (outs[o].requires_grad()) {
            roots.push_back(outs[o]);
            seeds.push_back(dy[o]);
        }
    }
    std::vector<Tensor<T>> targets;
    std::vector<std::size_t> target_input;
    for (std::size_t i = 0; i < n; ++i)
        if (theta[i].requires_grad()) {
            targets.push_back(theta[i]);
            target_input.push_back(i);
        }
    if (roots.empty() || targets.empty()) return result;
    // B = ∇<dy, F>, on the private graph.
    const std::vector<Tensor<T>> first = grad(roots, targets, seeds, {.create_graph = true});

    // <v, B> + <u, F> differentiated w.r.t. θ and dy, in one more pass.
    std::vector<Tensor<T>> roots2, seeds2, targets2;
    for (std::size_t k = 0; k < first.size(); ++k) {
        const Tensor<T>& direction = v[target_input[k]];
        if (direction.defined() && first[k].defined() && first[k].requires_grad()) {
            roots2.push_back(first[k]);
            seeds2.push_back(direction.detach());
        }
    }
    for (std::size_t o = 0; o < m; ++o)
        if (o < u.size() && u[o].defined() && outs[o].requires_grad()) {
            roots2.push_back(outs[o]);
            seeds2.push_back(u[o].detach());
        }
    std::vector<std::pair<bool, std::size_t>> slot;  // (is an output's J v, index)
    for (std::size_t k = 0; k < targets.size(); ++k)
        if (want_gradients[target_input[k]]) {
            targets2.push_back(targets[k]);
            slot.emplace_back(false, target_input[k]);
        }
    if (want_jvp)
        for (std::size_t o = 0; o < m; ++o) {
            targets2.push_back(dy[o]);
            slot.emplace_back(true, o);
        }
    if (roots2.empty() || targets2.empty()) return result;
    const std::vector<Tensor<T>> second = grad(roots2, targets2, seeds2);
    for (std::size_t k = 0; k < second.size(); ++k)
        (slot[k].first ? result.jvp : result.gradients)[slot[k].second] = second[k];
    return result;
}

template <class T>
bool beyond_first_order(const BackwardContext<T>& ctx) {
    if (ctx.create_graph()) return true;
    if (!forward_mode_enabled()) return false;
    for (std::size_t i = 0; i < ctx.num_inputs(); ++i)
        if (ctx.input(i).has_tangent()) return true;
    for (std::size_t o = 0; o < ctx.num_outputs(); ++o)
        if (ctx.has_grad_output(o) && ctx.grad_output(o).has_tangent()) return true;
    return false;
}

template <class T>
Gradients<T> record_backward(const std::shared_ptr<const ReplayOp<T>>& op, const BackwardContext<T>& ctx,
                             Gradients<T> values) {
    const std::size_t n = op->inputs, m = op->outputs;
    std::vector<Tensor<T>> inputs;
    for (std::size_t i = 0; i < n; ++i) inputs.push_back(ctx.input(i));
    // Refused here, before anything is recorded, when only the replay can answer; sweeps that
    // decline later fall back to the replay and refuse then.
    if (!op->sweeps) {
        require_replay(*op);
        require_leaf_weights(*op, inputs);
    }
    for (std::size_t o = 0; o < m; ++o) inputs.push_back(ctx.grad_output_or_zeros(o));
    // One output per gradient the fused backward computed; slots[k] is its input.
    std::vector<std::size_t> slots;
    std::vector<xt::xarray<T>> found;
    for (std::size_t i = 0; i < n; ++i)
        if (values[i].defined()) {
            slots.push_back(i);
            found.push_back(values[i].value());
        }
    if (slots.empty()) return values;
    const std::string name = op->op + "_backward";
    BackwardRule<T> second_order = [op, slots, name](const BackwardContext<T>& c) -> Gradients<T> {
        if (c.create_graph())
            throw GraphError(fmt::format(
                "backward of '{}' with create_graph=true: third-order gradients through the fused recurrent op are not "
                "supported (its second-order rule differentiates the layer's replay on a private graph); run the "
                "layer on the generic path (layer.set_path(rw::nn::ExecutionPath::generic))",
                name));
        if (beyond_first_order(c))
            throw GraphError(fmt::format(
                "backward of '{}' with tangents: forward mode over the fused recurrent op's second-order rule is not "
                "supported (one level of tangents over its first-order gradients is, as rw::hvp uses); run the layer "
                "on the generic path (layer.set_path(rw::nn::ExecutionPath::generic))",
                name));
        const std::size_t n = op->inputs, m = op->outputs;
        std::vector<Tensor<T>> inputs, grad_outputs, v(n);
        for (std::size_t i = 0; i < n; ++i) inputs.push_back(c.input(i));
        for (std::size_t o = 0; o < m; ++o) grad_outputs.push_back(c.input(n + o));
        for (std::size_t k = 0; k < slots.size(); ++k)
            if (c.has_grad_output(k)) v[slots[k]] = c.grad_output(k);
        std::vector<bool> want(n);
        bool want_jvp = false;
        for (std::size_t i = 0; i < n; ++i) want[i] = c.needs_input_grad(i);
        for (std::size_t o = 0; o < m; ++o) want_jvp = want_jvp || c.needs_input_grad(n + o);
        Directional<T> d = directional(*op, inputs, grad_outputs, v, {}, want_jvp, want);
        Gradients<T> gradients(n + m);
        for (std::size_t i = 0; i < n; ++i) gradients[i] = std::move(d.gradients[i]);
        for (std::size_t o = 0; o < m; ++o)
            if (c.needs_input_grad(n + o)) gradients[n + o] = std::move(d.jvp[o]);
        return gradients;
    };
    // The gradients' tangents: ∇²φ v + Jᵀ u for the tangents v of θ and u of dy.
    ForwardRule<T> tangents = [op, slots](const ForwardContext<T>& c) -> std::vector<Tensor<T>> {
        const std::size_t n = op->inputs, m = op->outputs;
        std::vector<Tensor<T>> inputs, grad_outputs, v(n), u(m);
        for (std::size_t i = 0; i < n; ++i) {
            inputs.push_back(c.input(i));
            v[i] = c.tangent(i);
        }
        for (std::size_t o = 0; o < m; ++o) {
            grad_outputs.push_back(c.input(n + o));
            u[o] = c.tangent(n + o);
        }
        std::vector<bool> want(n);
        for (std::size_t k : slots) want[k] = true;
        Directional<T> d = directional(*op, inputs, grad_outputs, v, u, false, want);
        std::vector<Tensor<T>> result;
        for (std::size_t k : slots) result.push_back(std::move(d.gradients[k]));
        return result;
    };
    const std::vector<Tensor<T>> outputs =
        record_op<T>(name, std::move(inputs), std::move(found), std::move(second_order), std::move(tangents));
    Gradients<T> gradients(n);
    for (std::size_t k = 0; k < slots.size(); ++k) gradients[slots[k]] = outputs[k];
    return gradients;
}

template <class T>
ForwardRule<T> forward_rule(const std::shared_ptr<const ReplayOp<T>>& op) {
    return [op](const ForwardContext<T>& c) -> std::vector<Tensor<T>> {
        if (!op->replay && !op->sweeps)
            throw GraphError(fmt::format(
                "op '{}' has no forward-mode (JVP) rule without a replay: the fused op's tangents come from a replay "
                "of the sequence with the cell's generic step(), which a layer (rw::nn::Recurrent) supplies and "
                "fused::run_sequence takes as its last argument",
                op->op));
        std::vector<Tensor<T>> inputs, v;
        for (std::size_t i = 0; i < op->inputs; ++i) {
            inputs.push_back(c.input(i));
            v.push_back(c.tangent(i));
        }
        return directional(*op, inputs, std::vector<Tensor<T>>(op->outputs), v, {}, true,
                           std::vector<bool>(op->inputs, false))
            .jvp;
    };
}

template struct ReplayOp<float>;
template struct ReplayOp<double>;
template Directional<float> directional(const ReplayOp<float>&, const std::vector<Tensor<float>>&,
                                        const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&,
                                        const std::vector<Tensor<float>>&, bool, const std::vector<bool>&);
template Directional<double> directional(const ReplayOp<double>&, const std::vector<Tensor<double>>&,
                                         const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&,
                                         const std::vector<Tensor<double>>&, bool, const std::vector<bool>&);
template bool beyond_first_order(const BackwardContext<float>&);
template bool beyond_first_order(const BackwardContext<double>&);
template Gradients<float> record_backward(const std::shared_ptr<const ReplayOp<float>>&, const BackwardContext<float>&,
                                          Gradients<float>);
template Gradients<double> record_backward(const std::shared_ptr<const ReplayOp<double>>&, const BackwardContext<double>&,
                                           Gradients<double>);
template ForwardRule<float> forward_rule(const std::shared_ptr<const ReplayOp<float>>&);
template ForwardRule<double> forward_rule(const std::shared_ptr<const ReplayOp<double>>&);

}  // namespace rw::nn::fused::replay
