#include "rewind/autograd/gemm.hpp"

#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <stdexcept>
#include <string>

namespace rw::blas {

namespace {

int thread_count = 1;

// One thread unless the program asks for more: small recurrent GEMMs lose to thread start-up
// costs, and timings stay repeatable.
[[maybe_unused]] const bool single_thread_by_default = [] {
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    return true;
}();

CBLAS_TRANSPOSE cblas_transpose(bool transpose) { return transpose ? CblasTrans : CblasNoTrans; }

void check(std::int64_t m, std::int64_t n, std::int64_t k) {
    if (m < 0 || n < 0 || k < 0) throw std::invalid_argument("gemm: negative dimension");
}

}  // namespace

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc) {
    check(m, n, k);
    if (m == 0 || n == 0) return;
#ifdef REWIND_FLOAT_GEMM_OPENBLAS
    cblas_sgemm(CblasRowMajor, cblas_transpose(transpose_a), cblas_transpose(transpose_b), m, n, k, alpha, a, lda, b,
                ldb, beta, c, ldc);
#else
    dnnl_status_t status = dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, alpha, a, lda, b,
                                      ldb, beta, c, ldc);
    if (status != dnnl_success)
        throw std::runtime_error("gemm: dnnl_sgemm failed with status " + std::to_string(static_cast<int>(status)));
#endif
}

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
          std::int64_t ldc) {
    check(m, n, k);
    if (m == 0 || n == 0) return;
    cblas_dgemm(CblasRowMajor, cblas_transpose(transpose_a), cblas_transpose(transpose_b), m, n, k, alpha, a, lda, b,
                ldb, beta, c, ldc);
}

void set_num_threads(int threads) {
    if (threads < 1) throw std::invalid_argument("set_num_threads: need at least one thread");
    thread_count = threads;
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
}

int num_threads() { return thread_count; }

const char* float_backend() {
#ifdef REWIND_FLOAT_GEMM_OPENBLAS
    return "openblas";
#else
    return "onednn";
#endif
}

}  // namespace rw::blas
