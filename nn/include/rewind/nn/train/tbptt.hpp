#pragma once
// Truncated backpropagation through time, TBPTT(k1, k2) (Williams & Peng, 1990), over a
// recurrent layer and a long stream [T_total, B, I].
//
// The stream is cut into chunks of k1 steps (the last may be shorter). For the chunk
// [begin, end) the layer runs over the window [max(0, end - k2), end), starting from the state
// it had at the window's start, detached there; the loss is taken on the window's last
// end - begin outputs only (the chunk's own steps), then backward runs, so every gradient
// reaches back at most k2 steps from the chunk's end and no further. Then `step` is called
// (typically optimizer.step(); optimizer.zero_grad()) and the next chunk follows.
//
// With k1 == k2 this is plain chunking: each chunk starts from the previous one's final state,
// detached. With k2 > k1 the windows overlap, so steps are run more than once (with the
// weights of the time); the state at the next window's start is taken on the way, by running
// each window as two consecutive forwards split at that point.
//
// Requirements: k1 >= 1, k2 >= k1, a time-major (batch_first = false), unidirectional layer.
// Gradients are not zeroed by the helper: that is the step callback's job. Dropout masks
// (between layers, or a VariationalDropoutCell's) are drawn afresh for every forward.

#include <cstddef>
#include <functional>
#include <vector>

#include "rewind/nn/layers/recurrent.hpp"

namespace rw::nn {

struct TbpttOptions {
    std::size_t k1 = 0;  // steps between updates (the chunk length)
    std::size_t k2 = 0;  // steps gradients flow back; 0 means k2 = k1
};

template <class T>
struct TbpttChunk {
    std::size_t index = 0;
    std::size_t begin = 0, end = 0;   // the chunk's steps in the stream, where the loss is taken
    std::size_t window_begin = 0;     // gradients reach back to this step and no earlier
    double loss = 0;
    std::vector<Tensor<T>> final_state;  // the state after step end - 1, detached; [L, B, H] each
};

// outputs [end - begin, B, H] are the layer's outputs at the chunk's steps; returns a scalar.
template <class T>
using ChunkLoss = std::function<Tensor<T>(const Tensor<T>& outputs, std::size_t begin, std::size_t end)>;
// Called after each chunk's backward.
template <class T>
using ChunkStep = std::function<void(const TbpttChunk<T>& chunk)>;

// Runs the whole stream and returns the final state (detached). initial_state is empty (the
// layer's zeros or learned state) or one [L, B, H] tensor per state tensor.
template <class T>
std::vector<Tensor<T>> truncated_bptt(Recurrent<T>& layer, const Tensor<T>& stream, const TbpttOptions& options,
                                      const ChunkLoss<T>& loss, const ChunkStep<T>& step,
                                      std::vector<Tensor<T>> initial_state = {});

// The layer's input for the steps [from, to) of the stream, [to - from, B, I], built anew for
// every forward: e.g. an embedding lookup, so that the modules in front of the recurrent layer
// are recorded per window and trained too (a precomputed stream tensor would share one graph
// that the first chunk's backward frees).
template <class T>
using WindowInput = std::function<Tensor<T>(std::size_t from, std::size_t to)>;

// The same over a stream of `total_steps` steps whose input comes from `input`.
template <class T>
std::vector<Tensor<T>> truncated_bptt(Recurrent<T>& layer, std::size_t total_steps, const WindowInput<T>& input,
                                      const TbpttOptions& options, const ChunkLoss<T>& loss, const ChunkStep<T>& step,
                                      std::vector<Tensor<T>> initial_state = {});

}  // namespace rw::nn
