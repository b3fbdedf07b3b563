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

// C = A op(B) + beta C repeated with the same B and sizes and a new A and C each time: the
// recurrent weight over the time steps of a sequence. For float on oneDNN, B is reordered once
// into oneDNN's blocked layout for a matmul primitive, which then skips the packing that every
// sgemm call repeats (measured on an AVX-512 machine: 89 instead of 110 us for 32x256 by
// 256x1024, 3.0 instead of 4.3 ms for 64x1024 by 1024x4096). The reorder and the primitive cost
// about 25-100 us, so B is packed only when `uses` (the expected number of calls) is at least
// packing_threshold, and only where it is faster: the first product of each shape times both
// ways (on an AVX2 machine packing can lose). Otherwise, and for double (and float on
// OpenBLAS), each call is a gemm().
// B is copied when packed, read in place otherwise: it must outlive this object unchanged.
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
    // Whether B was packed (false: each call is a gemm()).
    bool packed() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

extern template class PackedGemm<float>;
extern template class PackedGemm<double>;

// When PackedGemm packs B (for float on oneDNN, used many times): when_faster (the default, timed
// once per shape and thread), or always / never (tests of both ways; benchmarks that pin it).
enum class Packing { when_faster, always, never };
void set_packing(Packing policy);
Packing packing();

// Threads used by both BLAS libraries (oneDNN through OpenMP, OpenBLAS through its own pool).
void set_num_threads(int threads);
int num_threads();
// "onednn" or "openblas".
const char* float_backend();

}  // namespace rw::blas
