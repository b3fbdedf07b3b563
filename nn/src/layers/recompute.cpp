#include "rewind/nn/layers/recompute.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

namespace rw::nn {

namespace {

// a * b saturating at the largest size: footprints are only compared, never allocated from here.
std::size_t saturating_product(std::size_t a, std::size_t b) {
    return b != 0 && a > std::numeric_limits<std::size_t>::max() / b ? std::numeric_limits<std::size_t>::max() : a * b;
}

std::size_t saturating_sum(std::size_t a, std::size_t b) {
    return a > std::numeric_limits<std::size_t>::max() - b ? std::numeric_limits<std::size_t>::max() : a + b;
}

}  // namespace

std::size_t recompute_footprint(std::size_t steps, std::size_t segment, std::size_t step_bytes,
                                std::size_t checkpoint_bytes) {
    if (segment == 0 || segment >= steps) return saturating_product(steps, step_bytes);
    const std::size_t segments = (steps + segment - 1) / segment;
    return saturating_sum(saturating_product(segments, checkpoint_bytes), saturating_product(segment, step_bytes));
}

std::size_t recompute_segment(const RecomputeOptions& options, std::size_t steps, std::size_t step_bytes,
                              std::size_t checkpoint_bytes) {
    if (!options.enabled || steps <= 1) return 0;
    if (options.segment > 0) return options.segment >= steps ? 0 : options.segment;
    if (options.memory_budget == 0) {
        const auto root = static_cast<std::size_t>(std::ceil(std::sqrt(double(steps))));
        return root >= steps ? 0 : root;
    }
    if (step_bytes == 0)
        throw std::invalid_argument("recompute: a memory budget needs the bytes each step keeps (a cell with fused rules "
                                    "states them); give a segment length instead");
    if (recompute_footprint(steps, 0, step_bytes, checkpoint_bytes) <= options.memory_budget) return 0;
    // Longer segments mean fewer, larger GEMMs: take the longest that fits. The footprint is
    // not monotonic in k, so every k is tried (microseconds next to a forward pass over T steps).
    std::size_t best = 0, smallest = std::numeric_limits<std::size_t>::max();
    for (std::size_t k = 1; k < steps; ++k) {
        const std::size_t bytes = recompute_footprint(steps, k, step_bytes, checkpoint_bytes);
        smallest = std::min(smallest, bytes);
        if (bytes <= options.memory_budget) best = k;
    }
    if (best == 0)
        throw std::invalid_argument(fmt::format(
            "recompute: a memory budget of {} bytes is below the smallest footprint for {} steps, {} bytes",
            options.memory_budget, steps, smallest));
    return best;
}

}  // namespace rw::nn
