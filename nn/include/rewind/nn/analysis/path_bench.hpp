#pragma once
// Fused vs generic timing of any recurrent layer, a user's cell included: one training step
// (forward, loss = sum of the output, full backward to the input and every weight) on each path,
// interleaved round by round so load from other processes hits both alike; medians reported.
// `rewind bench` is this function plus its peers (sgemm, oneDNN) in the same rounds.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "rewind/nn/layers/recurrent.hpp"

namespace rw::nn {

struct PathBenchOptions {
    int repeats = 10;  // timed rounds
    int warmup = 2;    // untimed rounds first
    bool generic = true;  // false: time the fused path only (the generic tape is slow at large sizes)
    // Called once per round after the layer's steps (e.g. to time a peer in the same rounds);
    // `timed` is false during the warm-up.
    std::function<void(bool timed)> each_round = {};
};

struct PathBenchResult {
    std::vector<double> fused_ms, generic_ms;  // one per timed round
    double fused_median_ms = 0, generic_median_ms = 0;  // generic: NaN when not timed
    double generic_over_fused = 0;                      // NaN when not timed
    // GEMM flops of one training step (3x the forward's), from the cells' fused rules; 0 when a
    // cell states none (no fused rules), and then the GFLOP/s are NaN.
    double flops = 0;
    double fused_gflops = 0, generic_gflops = 0;
    bool fused_ran = false;  // the "fused" rounds really ran fused (else path_note says why)
    std::string path_note;
    std::size_t recompute_segment = 0;  // the layer's, on the fused rounds (0: every step kept)
    // Measured on the fused rounds (fused::driver_memory()): the most bytes its driver kept from a
    // forward to its backward (saved activations, checkpoints), and its high-water mark over a
    // training step (with the backward's scratch).
    std::size_t fused_saved_bytes = 0, fused_peak_bytes = 0;
    double checksum = 0;     // keeps the work from being optimised away
    // One line: the medians, their ratio, GFLOP/s, and whether the fused rounds ran fused.
    std::string to_string() const;
};

// input [T, B, I] (or [B, T, I] when batch_first). The layer's path is restored afterwards.
template <class T>
PathBenchResult bench_paths(Recurrent<T>& layer, const Tensor<T>& input, const PathBenchOptions& options = {});

// The layer and random input of bench_cell_paths.
struct CellBenchSizes {
    std::size_t steps = 100, batch = 32, input = 256, hidden = 256;
    std::size_t layers = 1;
    bool bidirectional = false;
    std::uint64_t seed = 0;  // the layer's initialisation and the input's draw
};

// A user's cell timed in one call: a layer of cells made by `factory` (what a Recurrent takes),
// random input [steps, batch, input] ~ N(0, 1), then bench_paths. E.g.
//   rw::nn::bench_cell_paths<float>(my_factory, {.steps = 100, .batch = 32}).to_string()
template <class T>
PathBenchResult bench_cell_paths(const CellFactory<T>& factory, const CellBenchSizes& sizes = {},
                                 const PathBenchOptions& options = {});

// GEMM flops of one training step over [steps, batch] from the cells' fused rules; 0 when any
// cell has none.
template <class T>
double training_flops(const Recurrent<T>& layer, std::size_t steps, std::size_t batch);

double median_of(std::vector<double> values);

}  // namespace rw::nn
