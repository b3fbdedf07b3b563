#pragma once
// Recomputation over time (gradient checkpointing) for training on long sequences: a layer keeps
// its states only before every k-th step and recomputes each segment of k steps during backward,
// so the memory kept for backward grows like T/k + k steps instead of T (k = sqrt(T) minimises
// it) at the price of about one more forward pass. Both paths use it: the fused driver with its
// own windows (fused/cell_rules.hpp run_sequence), the generic path by recording each segment as
// one checkpoint op (autograd/recompute.hpp).

#include <cstddef>

namespace rw::nn {

struct RecomputeOptions {
    bool enabled = false;
    // Steps per segment; 0: the longest that fits memory_budget, or ceil(sqrt(T)) without one.
    std::size_t segment = 0;
    // Bytes that one layer and direction's saved buffers may take (checkpoints plus one window);
    // 0: no budget. Needs a cell whose fused rules state its layout (for the bytes per step).
    std::size_t memory_budget = 0;
};

// The segment length a layer uses for `steps` steps, or 0 for none (off, or everything fits the
// budget). step_bytes: what one step keeps (fused::saved_bytes_per_step); checkpoint_bytes: the
// states before one step. Throws std::invalid_argument naming the smallest possible footprint
// when even the best segment length exceeds the budget.
std::size_t recompute_segment(const RecomputeOptions& options, std::size_t steps, std::size_t step_bytes,
                              std::size_t checkpoint_bytes);

// What the saved buffers of one layer and direction take with that segment (0: none).
std::size_t recompute_footprint(std::size_t steps, std::size_t segment, std::size_t step_bytes,
                                std::size_t checkpoint_bytes);

}  // namespace rw::nn
