#include "rewind/autograd/engine.hpp"

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xoperation.hpp>

#include "rewind/autograd/errors.hpp"
#include "rewind/autograd/ops.hpp"

namespace rw {

template <class T>
void check_backward_anomaly(const Node<T>& node, const Gradients<T>& gradients);

namespace {

// Pass ids mark the nodes a pass has collected (Node::visited_by_), so collecting needs no set.
std::atomic<std::uint64_t> next_pass_id{1};
// Passes running on this thread: more than one while a backward rule runs a backward of its own.
thread_local int pass_depth = 0;

}  // namespace

namespace detail {

// One run of the tape in reverse. Gradients of intermediate tensors are summed in their
// TensorImpl::pending slot; nodes run in decreasing sequence number, which is a reverse
// topological order because an op is always recorded after its inputs.
// The one class that changes the tape's bookkeeping (a friend of Node, TensorImpl and Tensor).
template <class T>
class BackwardPass {
public:
    BackwardPass(BackwardOptions options, const std::vector<Tensor<T>>* targets)
        : options_(options), targets_(targets), nested_(pass_depth++ > 0) {
        // A graph built by create_graph refers to this one (saved inputs and outputs): freeing
        // it would leave the new gradients impossible to differentiate, so keep it (as PyTorch does).
        if (options_.create_graph) options_.retain_graph = true;
        if (targets_)
            for (std::size_t i = 0; i < targets_->size(); ++i) target_index_[(*targets_)[i].impl().get()] = i;
    }

    ~BackwardPass() {
        // Leaves no scratch state behind, also when a backward rule threw.
        for (auto& impl : touched_) impl->pending = Tensor<T>();
        for (auto& [impl, sum] : stashed_) impl->pending = std::move(sum);
        --pass_depth;
    }

    std::vector<Tensor<T>> run(const std::vector<Tensor<T>>& roots, const std::vector<Tensor<T>>& seeds) {
        if (seeds.size() != roots.size())
            throw std::invalid_argument(fmt::format("backward: {} roots but {} seeds", roots.size(), seeds.size()));
        for (std::size_t i = 0; i < roots.size(); ++i) seed(roots[i], seeds[i]);
        collect_nodes(roots);

        EnableGradGuard grad_mode(options_.create_graph);
        for (const auto& node : nodes_) run_node(*node);
        return finish_leaves();
    }

private:
    void seed(const Tensor<T>& root, Tensor<T> seed) {
        if (!root.requires_grad()) throw GraphError("backward: the root tensor does not require a gradient");
        if (!seed.defined()) {
            if (root.size() != 1)
                throw GraphError(fmt::format(
                    "backward: an implicit seed needs a one-element root; pass a seed gradient (root shape {})",
                    shape_string(root.shape())));
            seed = Tensor<T>::ones(root.shape());
        } else if (seed.shape() != root.shape()) {
            throw_shape_error("backward", "seed shape differs from the root's", seed.shape(), root.shape());
        }
        accumulate(root.impl(), std::move(seed));
    }

    void collect_nodes(const std::vector<Tensor<T>>& roots) {
        const std::uint64_t pass = next_pass_id.fetch_add(1, std::memory_order_relaxed);
        std::vector<std::shared_ptr<Node<T>>> stack;
        auto visit = [&](const std::shared_ptr<Node<T>>& node) {
            if (node && node->visited_by_ != pass) {
                node->visited_by_ = pass;
                stack.push_back(node);
            }
        };
        for (const auto& root : roots) visit(root.grad_fn());
        while (!stack.empty()) {
            std::shared_ptr<Node<T>> node = stack.back();
            stack.pop_back();
            if (node->released_)
                throw GraphError(fmt::format(
                    "backward through a graph that was already freed (op '{}'); pass retain_graph=true to the "
                    "first backward to run it again",
                    node->name_));
            nodes_.push_back(node);
            for (const auto& input : node->inputs_)
                if (input.requires_grad()) {
                    visit(input.grad_fn());
                    if (is_hooked_leaf(input)) ++leaf_uses_[input.impl().get()];
                }
        }
        touched_.reserve(touched_.size() + nodes_.size() + 8);
        // A chain (the common case) is collected already in order; sort only when it is not.
        auto later = [](const auto& a, const auto& b) { return a->sequence_ > b->sequence_; };
        if (!std::is_sorted(nodes_.begin(), nodes_.end(), later)) std::sort(nodes_.begin(), nodes_.end(), later);
    }

    // A plain tensor (not on any graph) that only this reference holds.
    // (Not in anomaly mode, where the out-of-place add checks the sum; not with a tangent, which
    // the out-of-place add carries into the sum: forward-over-reverse.)
    static bool is_private(const Tensor<T>& tensor) {
        return tensor.impl().use_count() == 1 && !tensor.requires_grad() && !anomaly_mode_enabled() &&
               !tensor.has_tangent();
    }

    // Note [Nested passes]: a backward rule may run a backward pass of its own (recomputation,
    // the fused op's replay) whose graph shares tensors with the outer pass's, a module's
    // parameters at least. The partial sums live in TensorImpl::pending, so the inner pass sets
    // aside an outer sum it finds on a tensor the first time it touches it, and puts it back
    // when it ends; it also never takes a node output's sum it did not make itself, and runs no
    // hooks (a data-parallel all-reduce must see the outer pass's total, not a replay's part).
    bool is_mine(const TensorImpl<T>* impl) const { return !nested_ || mine_.count(impl) != 0; }

    void isolate(const std::shared_ptr<TensorImpl<T>>& impl) {
        if (!mine_.insert(impl.get()).second) return;
        if (impl->pending.defined()) {
            stashed_.emplace_back(impl, std::move(impl->pending));
            impl->pending = Tensor<T>();
        }
    }

    // Shared ownership keeps the tensor (and its pending gradient) alive when a released node
    // drops its inputs before the tensor's own producer has run.
    void accumulate(const std::shared_ptr<TensorImpl<T>>& impl, Tensor<T> gradient) {
        if (nested_) isolate(impl);
        Tensor<T>& pending = impl->pending;
        if (!pending.defined()) {
            pending = std::move(gradient);
            touched_.push_back(impl);
            if (!impl->grad_fn) leaves_.push_back(impl);
        } else if (!options_.create_graph && is_private(pending) && !gradient.has_tangent()) {
            // Nothing else holds the running sum (no caller, rule, hook or graph): add in place
            // instead of allocating a fresh gradient for every use, e.g. of a weight at every step.
            add_into(pending.mutable_value(), gradient.value());
        } else if (!options_.create_graph && is_private(gradient) && !pending.has_tangent()) {
            add_into(gradient.mutable_value(), pending.value());
            pending = std::move(gradient);
        } else {
            // Out of place: the stored gradient is shared with the caller or another rule, or
            // create_graph needs the sum on the tape.
            pending = add(pending, gradient);
        }
    }

    // sum += addend; gradients of one tensor have its shape (check_gradients), so this is a
    // plain loop but for seeds and odd custom rules.
    static void add_into(xt::xarray<T>& sum, const xt::xarray<T>& addend) {
        if (sum.shape() != addend.shape()) {
            xt::noalias(sum) += addend;
            return;
        }
        T* s = sum.data();
        const T* a = addend.data();
        for (std::size_t i = 0, n = sum.size(); i < n; ++i) s[i] += a[i];
    }

    // A tensor's gradient is complete; show it to hooks, keep it where asked.
    void deliver(TensorImpl<T>& impl, const Tensor<T>& gradient) {
        // An inner pass's gradient is a part of the outer one's: hooks see only the outer total.
        if (!nested_)
            for (const auto& hook : impl.hooks) hook(gradient);
        auto target = target_index_.empty() ? target_index_.end() : target_index_.find(&impl);
        if (target != target_index_.end()) {
            captured_[target->second] = gradient;
        } else if (!targets_ && (!impl.grad_fn || impl.retains_grad)) {
            impl.grad = std::make_unique<Tensor<T>>(impl.grad ? add(*impl.grad, gradient) : gradient);
        }
    }

    void run_node(Node<T>& node) {
        // One vector reused by every node: it is emptied again below.
        std::vector<Tensor<T>>& grad_outputs = grad_outputs_;
        grad_outputs.assign(node.outputs_.size(), Tensor<T>());
        bool any = false;
        for (std::size_t i = 0; i < node.outputs_.size(); ++i) {
            auto impl = node.outputs_[i].lock();
            if (!impl || !impl->pending.defined() || !is_mine(impl.get())) continue;
            grad_outputs[i] = std::move(impl->pending);
            impl->pending = Tensor<T>();
            deliver(*impl, grad_outputs[i]);
            any = true;
        }
        if (any) {
            BackwardContext<T> context(node, grad_outputs, options_.create_graph);
            Gradients<T> gradients = node.backward_(context);
            check_gradients(node, gradients);
            if (anomaly_mode_enabled()) check_backward_anomaly(node, gradients);
            for (std::size_t i = 0; i < gradients.size(); ++i) {
                const auto& input = node.inputs_[i];
                if (gradients[i].defined() && input.requires_grad()) accumulate(input.impl(), std::move(gradients[i]));
            }
        }
        if (!leaf_uses_.empty()) deliver_complete_leaves(node);
        grad_outputs.clear();
        if (!options_.retain_graph) {
            node.backward_ = nullptr;
            node.inputs_.clear();
            node.released_ = true;
        }
    }

    // Note [early leaves]: a leaf with hooks (e.g. a parameter whose gradient data-parallel
    // training all-reduces) is delivered as soon as the last node that uses it has run, so the
    // hook can start work that overlaps the rest of the backward (PyTorch's AccumulateGrad
    // fires the same way). leaf_uses_ counts, per such leaf, the uses by collected nodes not yet run.
    static bool is_hooked_leaf(const Tensor<T>& tensor) {
        return !tensor.grad_fn() && !tensor.impl()->hooks.empty();
    }

    void deliver_complete_leaves(const Node<T>& node) {
        for (const auto& input : node.inputs_) {
            if (!input.requires_grad() || !is_hooked_leaf(input)) continue;
            auto uses = leaf_uses_.find(input.impl().get());
            if (uses == leaf_uses_.end() || --uses->second > 0) continue;
            leaf_uses_.erase(uses);
            TensorImpl<T>& impl = *input.impl();
            if (!impl.pending.defined() || !is_mine(&impl)) continue;
            Tensor<T> gradient = std::move(impl.pending);
            impl.pending = Tensor<T>();
            deliver(impl, gradient);
        }
    }

    static void check_gradients(const Node<T>& node, const Gradients<T>& gradients) {
        if (gradients.size() != node.inputs_.size())
            throw GraphError(fmt::format("backward of op '{}' returned {} gradients for {} inputs", node.name_,
                                         gradients.size(), node.inputs_.size()));
        for (std::size_t i = 0; i < gradients.size(); ++i)
            if (gradients[i].defined() && gradients[i].value().shape() != node.inputs_[i].value().shape())
                throw GraphError(fmt::format("backward of op '{}' returned a gradient of shape {} for input {} of shape {}",
                                             node.name_, shape_string(gradients[i].shape()), i,
                                             shape_string(node.inputs_[i].shape())));
    }

    std::vector<Tensor<T>> finish_leaves() {
        for (auto& impl : leaves_) {
            if (!impl->pending.defined()) continue;
            Tensor<T> gradient = std::move(impl->pending);
            impl->pending = Tensor<T>();
            deliver(*impl, gradient);
        }
        return std::move(captured_);
    }

    BackwardOptions options_;
    const std::vector<Tensor<T>>* targets_;
    std::unordered_map<const TensorImpl<T>*, std::size_t> target_index_;
    std::vector<Tensor<T>> captured_ = std::vector<Tensor<T>>(targets_ ? targets_->size() : 0);
    std::vector<std::shared_ptr<Node<T>>> nodes_;
    std::vector<Tensor<T>> grad_outputs_;
    std::vector<std::shared_ptr<TensorImpl<T>>> touched_;
    std::vector<std::shared_ptr<TensorImpl<T>>> leaves_;
    std::unordered_map<const TensorImpl<T>*, std::size_t> leaf_uses_;  // Note [early leaves]
    bool nested_;  // Note [Nested passes]
    std::unordered_set<const TensorImpl<T>*> mine_;
    std::vector<std::pair<std::shared_ptr<TensorImpl<T>>, Tensor<T>>> stashed_;
};

}  // namespace detail

template <class T>
void backward(const std::vector<Tensor<T>>& roots, const std::vector<Tensor<T>>& seeds, BackwardOptions options) {
    detail::BackwardPass<T>(options, nullptr).run(roots, seeds);
}

template <class T>
std::vector<Tensor<T>> grad(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& inputs,
                            const std::vector<Tensor<T>>& seeds, BackwardOptions options) {
    for (const auto& input : inputs)
        if (!input.requires_grad()) throw GraphError("grad: an input does not require a gradient");
    std::vector<Tensor<T>> all_seeds = seeds.empty() ? std::vector<Tensor<T>>(outputs.size()) : seeds;
    return detail::BackwardPass<T>(options, &inputs).run(outputs, all_seeds);
}

template void backward(const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&, BackwardOptions);
template void backward(const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&, BackwardOptions);
template std::vector<Tensor<float>> grad(const std::vector<Tensor<float>>&, const std::vector<Tensor<float>>&,
                                         const std::vector<Tensor<float>>&, BackwardOptions);
template std::vector<Tensor<double>> grad(const std::vector<Tensor<double>>&, const std::vector<Tensor<double>>&,
                                          const std::vector<Tensor<double>>&, BackwardOptions);

}  // namespace rw
