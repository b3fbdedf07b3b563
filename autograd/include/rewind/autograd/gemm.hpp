#pragma once
// The one GEMM layer: every matrix product in rewind goes through here.
// Row-major C = alpha * op(A) * op(B) + beta * C, with op(X) = X or X^T; C is [m, n],
// op(A) is [m, k], op(B) is [k, n]. beta = 1 accumulates into C (gradients in place).
// float runs on oneDNN's dnnl_sgemm (or OpenBLAS with REWIND_FLOAT_GEMM_OPENBLAS), double on
// OpenBLAS's cblas_dgemm.

#include <cstdint>
#include <memory>

namespace rw::blas {

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc);
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
          std::int64_t ldc);

// How PackedGemm computes its products (Note [Repeated products], gemm.cpp): fastest (the
// default: the three below timed once per shape and thread, the fastest kept), or one of them
// pinned (tests of each way; benchmarks that want it fixed): packed (B reordered once into
// oneDNN's layout for a matmul primitive), plain (a gemm() per call), transposed (c^T = op(B)^T
// a^T by gemm(), added into c in tiles).
enum class RepeatedGemm { fastest, packed, plain, transposed };
void set_repeated_gemm(RepeatedGemm policy);
RepeatedGemm repeated_gemm();

// C = A op(B) + beta C repeated with the same B and sizes and a new A and C each time: the
// recurrent weight over the time steps of a sequence. For float on oneDNN, each product is
// computed the fastest of three ways, timed on the first PackedGemm of its shape (the set-up
// costs tens of microseconds, so only when `uses`, the expected number of calls, is at least packing_threshold).
// Otherwise, and for double (and float on OpenBLAS), each call is a gemm(). B is copied when
// packed, read in place otherwise: it must outlive this object unchanged.
template <class T>
class PackedGemm {
public:
    static constexpr std::int64_t packing_threshold = 16;

    PackedGemm(bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, const T* b, std::int64_t ldb, T beta,
               std::int64_t lda, std::int64_t ldc, std::int64_t uses);
    ~PackedGemm();
    PackedGemm(const PackedGemm&) = delete;
    PackedGemm& operator=(const PackedGemm&) = delete;

    // c [m, n] (row stride ldc) = a [m, k] (row stride lda) op(B) + beta c.
    void operator()(const T* a, T* c) const;
    // How the products are computed: packed, plain or transposed.
    RepeatedGemm used() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

extern template class PackedGemm<float>;
extern template class PackedGemm<double>;

// Threads used by both BLAS libraries (oneDNN through OpenMP, OpenBLAS through its own pool).
void set_num_threads(int threads);
int num_threads();
// "onednn" or "openblas".
const char* float_backend();

}  // namespace rw::blas
