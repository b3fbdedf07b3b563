#pragma once
// Gradient averaging across ranks as PyTorch's DistributedDataParallel does it (its C++
// Reducer, torch/csrc/distributed/c10d/reducer.cpp), on MPI.
//
// The parameters are grouped into buckets of about `bucket_bytes`, in reverse registration
// order, the order in which backward roughly produces their gradients (DDP's initial
// assignment). A gradient hook on every parameter copies its gradient into its bucket when the
// engine has completed it (Note [early leaves] in autograd's engine); when every gradient of a
// bucket is in, that bucket's non-blocking MPI_Iallreduce starts, while backward goes on with
// the rest of the graph. Buckets start strictly in bucket order, so all ranks issue the
// collectives in the same order (MPI requires it); a bucket that is ready early waits for its
// predecessors. Each hook also calls MPI_Testall on the buckets in flight: MPI progresses
// non-blocking collectives only inside MPI calls. synchronize(), after backward, starts
// whatever did not start (a parameter that got no gradient this pass contributes zeros, as
// with DDP's find_unused_parameters), waits, and writes every parameter's averaged gradient.
// With overlap = false, nothing happens during backward: synchronize() copies the gradients and
// all-reduces every bucket then ("all-reduce after backward"), also after several backward
// passes (gradient accumulation). Both modes use MPI_Iallreduce + MPI_Waitall: on a loaded
// machine, where the other rank is often not running, blocking MPI_Allreduce busy-waits and
// made the char LM much slower (figures in docs/distributed.md).
//
// Averaging: by default each rank counts once, so the result is the sum over ranks divided by
// the number of ranks, as in DDP. When ranks hold shards of different sizes, set_weight(n)
// before synchronize() (n: the number of examples, or of loss terms, this rank's mean loss is
// over): the result is then sum_r n_r g_r / sum_r n_r, the gradient of the mean loss over the
// whole global batch, exactly what one process computes on all of it.
//
// Agreement on non-finite gradients: the last bucket to start carries, beside the gradients, a
// flag (this rank saw a NaN or Inf), the rank's weight and one "had a gradient" count per
// parameter, all reduced with it. So every rank learns that some rank was not finite, and the
// summed gradient is then not finite on every rank either (NaN and Inf survive a sum): an
// optimizer with NonFinitePolicy::skip skips on all ranks together and the replicas never
// diverge. A parameter no rank had a gradient for keeps an undefined gradient, as in one process.
//
// Requirements: every rank has the same parameters in the same order (the reducer checks names
// and shapes across ranks at construction), calls backward and synchronize() the same number of
// times, and calls MPI from one thread (MPI_THREAD_FUNNELED).

#include <cstddef>
#include <memory>
#include <vector>

#include <rewind/nn/module.hpp>

#include "rewind/dist/communicator.hpp"

namespace rw::dist {

struct ReducerOptions {
    std::size_t bucket_bytes = std::size_t(1) << 20;  // a bucket closes once it holds this many bytes
    bool overlap = true;                               // all-reduce during backward (DDP) or after it
};

struct SyncReport {
    bool finite = true;                  // no rank had a NaN or Inf in its gradients
    double total_weight = 0;             // sum of the ranks' weights (the number of ranks by default)
    std::size_t buckets = 0;
    std::size_t started_in_backward = 0;  // buckets whose all-reduce began before synchronize()
    double wait_seconds = 0;              // time synchronize() spent starting and waiting for all-reduces
};

template <class T>
class GradientReducer {
public:
    // Registers the gradient hooks. `comm` must outlive the reducer.
    GradientReducer(const Communicator& comm, nn::NamedTensors<T> parameters, ReducerOptions options = {});
    ~GradientReducer();
    GradientReducer(const GradientReducer&) = delete;
    GradientReducer& operator=(const GradientReducer&) = delete;

    // This rank's share of the global batch for the coming synchronize() (see above); must be
    // set before the backward of the step. Zero is allowed: a rank without data this step still
    // calls synchronize() and contributes nothing.
    void set_weight(double weight);
    // Completes the all-reduce and sets every parameter's gradient to the weighted average.
    SyncReport synchronize();

    // Parameter indices (into the constructor's list) of each bucket, in start order.
    const std::vector<std::vector<std::size_t>>& buckets() const;
    const ReducerOptions& options() const;

private:
    struct State;
    std::shared_ptr<State> state_;  // shared with the hooks, which outlive the reducer
};

extern template class GradientReducer<float>;
extern template class GradientReducer<double>;

}  // namespace rw::dist
