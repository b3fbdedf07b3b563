#pragma once
// The one GEMM layer: every matrix product in rewind goes through here.
// Row-major C = alpha * op(A) * op(B) + beta * C, with op(X) = X or X^T; C is [m, n],
// op(A) is [m, k], op(B) is [k, n]. beta = 1 accumulates into C (gradients in place).
// float runs on oneDNN's dnnl_sgemm (or OpenBLAS with REWIND_FLOAT_GEMM_OPENBLAS), double on
// OpenBLAS's cblas_dgemm.

#include <cstdint>

namespace rw::blas {

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc);
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
          std::int64_t ldc);

// Threads used by both BLAS libraries (oneDNN through OpenMP, OpenBLAS through its own pool).
void set_num_threads(int threads);
int num_threads();
// "onednn" or "openblas".
const char* float_backend();

}  // namespace rw::blas
