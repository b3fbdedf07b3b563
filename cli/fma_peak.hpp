#pragma once
// The cores' FMA peak, measured rather than looked up: what `rewind bench` reports its GFLOP/s
// against besides a same-run sgemm.

namespace rw::cli {

// GFLOP/s of fused multiply-adds on the widest float SIMD batch this build targets, on `threads`
// threads at once; the best of several short rounds, measured once per process and thread count.
double fma_peak_gflops(int threads);
// Measures again and keeps the higher figure: on a loaded machine one measurement can come out far
// below the cores' peak, so a long benchmark measures beside every case and divides by the best.
double remeasure_fma_peak_gflops(int threads);

}  // namespace rw::cli
