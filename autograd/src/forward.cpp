// make_dual, jvp, vjp and hvp (forward.hpp).

#include "rewind/autograd/forward.hpp"

#include <fmt/format.h>

#include "rewind/autograd/engine.hpp"
#include "rewind/autograd/errors.hpp"

namespace rw {

namespace {

void check_count(const char* op, const char* given, std::size_t count, const char* expected, std::size_t wanted) {
    if (count != wanted)
        throw std::invalid_argument(fmt::format("{}: {} {} given for {} {}", op, count, given, wanted, expected));
}

// "jvp: tangent 1 has shape [3, 2], expected [2, 3] (primal 1's shape)"
template <class T>
void check_like(const char* op, const char* what, std::size_t index, const Tensor<T>& given, const char* of,
                const Tensor<T>& reference) {
    if (given.defined() && given.shape() != reference.shape())
        throw ShapeError(fmt::format("{}: {} {} has shape {}, expected {} ({} {}'s shape)", op, what, index,
                                     shape_string(given.shape()), shape_string(reference.shape()), of, index));
}

template <class T>
Tensor<T> or_zeros(const Tensor<T>& tensor, const Tensor<T>& like) {
    return tensor.defined() ? tensor : Tensor<T>::zeros(like.shape());
}

template <class T>
HvpResult<T> hvp_of(Tensor<T> loss, const std::vector<Tensor<T>>& wrt, const char* op) {
    if (!loss.defined() || loss.size() != 1)
        throw ShapeError(fmt::format("{}: the loss must have one element, got shape {}", op,
                                     loss.defined() ? shape_string(loss.shape()) : std::string("(undefined)")));
    HvpResult<T> result;
    if (loss.requires_grad()) result.gradient = grad<T>({loss}, wrt);
    else result.gradient.resize(wrt.size());
    // Every tangent is read before any is cleared: two gradients may be one tensor (add's backward
    // hands both inputs the same gradient), and clearing the first would zero the second's.
    for (std::size_t i = 0; i < wrt.size(); ++i) {
        result.gradient[i] = or_zeros(result.gradient[i], wrt[i]);
        result.product.push_back(or_zeros(result.gradient[i].tangent(), result.gradient[i]));
    }
    // Taken off the results so that they do not flow on into the caller's later ops.
    for (auto& gradient : result.gradient) gradient.clear_tangent();
    loss.clear_tangent();
    result.value = loss;
    return result;
}

}  // namespace

template <class T>
Tensor<T> make_dual(const Tensor<T>& primal, const Tensor<T>& tangent) {
    if (!primal.defined() || !tangent.defined()) throw std::invalid_argument("make_dual: an undefined tensor");
    if (tangent.shape() != primal.shape())
        throw ShapeError(fmt::format("make_dual: tangent has shape {}, expected {} (the primal's shape)",
                                     shape_string(tangent.shape()), shape_string(primal.shape())));
    Tensor<T> dual = record_op<T>(
        "make_dual", {primal}, primal.value(),
        [](const BackwardContext<T>& ctx) -> Gradients<T> { return {ctx.grad_output(0)}; },
        [](const ForwardContext<T>& ctx) -> std::vector<Tensor<T>> { return {ctx.tangent(0)}; });
    dual.set_tangent(tangent);
    return dual;
}

template <class T>
JvpResult<T> jvp(const TensorFunction<T>& f, const std::vector<Tensor<T>>& primals,
                 const std::vector<Tensor<T>>& tangents) {
    check_count("jvp", "tangents", tangents.size(), "primals", primals.size());
    std::vector<Tensor<T>> duals;
    for (std::size_t i = 0; i < primals.size(); ++i) {
        check_like("jvp", "tangent", i, tangents[i], "primal", primals[i]);
        duals.push_back(tangents[i].defined() ? make_dual(primals[i], tangents[i]) : primals[i]);
    }
    JvpResult<T> result;
    {
        ForwardModeGuard on(true);
        result.outputs = f(duals);
    }
    for (auto& output : result.outputs) result.tangents.push_back(or_zeros(output.tangent(), output));
    for (auto& output : result.outputs) output.clear_tangent();  // after reading all: outputs may be one tensor
    return result;
}

template <class T>
VjpResult<T> vjp(const TensorFunction<T>& f, const std::vector<Tensor<T>>& primals,
                 const std::vector<Tensor<T>>& cotangents) {
    // Fresh leaves: the gradients are f's alone, whatever graph made the primals.
    std::vector<Tensor<T>> leaves;
    for (const auto& primal : primals) leaves.push_back(primal.detach().set_requires_grad(true));
    VjpResult<T> result;
    {
        EnableGradGuard recording(true);
        result.outputs = f(leaves);
    }
    check_count("vjp", "cotangents", cotangents.size(), "outputs", result.outputs.size());
    std::vector<Tensor<T>> roots, seeds;
    for (std::size_t o = 0; o < result.outputs.size(); ++o) {
        check_like("vjp", "cotangent", o, cotangents[o], "output", result.outputs[o]);
        if (cotangents[o].defined() && result.outputs[o].requires_grad()) {
            roots.push_back(result.outputs[o]);
            seeds.push_back(cotangents[o]);
        }
    }
    if (!roots.empty()) result.gradients = grad<T>(roots, leaves, seeds);
    result.gradients.resize(leaves.size());
    for (std::size_t i = 0; i < leaves.size(); ++i) result.gradients[i] = or_zeros(result.gradients[i], leaves[i]);
    return result;
}

template <class T>
HvpResult<T> hvp(const LossFunction<T>& f, const std::vector<Tensor<T>>& primals, const std::vector<Tensor<T>>& vectors) {
    check_count("hvp", "vectors", vectors.size(), "primals", primals.size());
    std::vector<Tensor<T>> leaves;
    for (std::size_t i = 0; i < primals.size(); ++i) {
        check_like("hvp", "vector", i, vectors[i], "primal", primals[i]);
        leaves.push_back(primals[i].detach().set_requires_grad(true));
        if (vectors[i].defined()) leaves.back().set_tangent(vectors[i]);
    }
    EnableGradGuard recording(true);
    ForwardModeGuard on(true);
    return hvp_of(f(leaves), leaves, "hvp");
}

template <class T>
HvpResult<T> hvp_leaves(const std::function<Tensor<T>()>& loss, const std::vector<Tensor<T>>& leaves,
                        const std::vector<Tensor<T>>& vectors) {
    check_count("hvp_leaves", "vectors", vectors.size(), "leaves", leaves.size());
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        check_like("hvp_leaves", "vector", i, vectors[i], "leaf", leaves[i]);
        if (!leaves[i].is_leaf() || !leaves[i].requires_grad())
            throw GraphError(fmt::format("hvp_leaves: tensor {} is not a leaf that requires a gradient", i));
    }
    // Tangents set on the caller's tensors for this call only.
    struct Cleared {
        std::vector<Tensor<T>> leaves;
        ~Cleared() {
            for (auto& leaf : leaves) leaf.clear_tangent();
        }
    } cleared{leaves};
    for (std::size_t i = 0; i < leaves.size(); ++i)
        if (vectors[i].defined()) cleared.leaves[i].set_tangent(vectors[i]);
    EnableGradGuard recording(true);
    ForwardModeGuard on(true);
    return hvp_of(loss(), leaves, "hvp_leaves");
}

template Tensor<float> make_dual(const Tensor<float>&, const Tensor<float>&);
template Tensor<double> make_dual(const Tensor<double>&, const Tensor<double>&);
template JvpResult<float> jvp(const TensorFunction<float>&, const std::vector<Tensor<float>>&,
                              const std::vector<Tensor<float>>&);
template JvpResult<double> jvp(const TensorFunction<double>&, const std::vector<Tensor<double>>&,
                               const std::vector<Tensor<double>>&);
template VjpResult<float> vjp(const TensorFunction<float>&, const std::vector<Tensor<float>>&,
                              const std::vector<Tensor<float>>&);
template VjpResult<double> vjp(const TensorFunction<double>&, const std::vector<Tensor<double>>&,
                               const std::vector<Tensor<double>>&);
template HvpResult<float> hvp(const LossFunction<float>&, const std::vector<Tensor<float>>&,
                              const std::vector<Tensor<float>>&);
template HvpResult<double> hvp(const LossFunction<double>&, const std::vector<Tensor<double>>&,
                               const std::vector<Tensor<double>>&);
template HvpResult<float> hvp_leaves(const std::function<Tensor<float>()>&, const std::vector<Tensor<float>>&,
                                     const std::vector<Tensor<float>>&);
template HvpResult<double> hvp_leaves(const std::function<Tensor<double>()>&, const std::vector<Tensor<double>>&,
                                      const std::vector<Tensor<double>>&);

}  // namespace rw
