#include "rewind/autograd/gemm.hpp"

#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdlib>
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

// The fallback: one gemm() call per product.
template <class T>
struct PlainPackedGemm {
    bool transpose_b;
    std::int64_t m, n, k;
    const T* b;
    std::int64_t ldb;
    T beta;
    std::int64_t lda, ldc;
    void run(const T* a, T* c) const { gemm(false, transpose_b, m, n, k, T(1), a, lda, b, ldb, beta, c, ldc); }
};

// PackedGemm<T>::Impl is PackedImpl<T>, specialised per element type here: clang refuses an
// explicit specialisation of the member class after the header's extern template declarations.
template <class T>
struct PackedImpl;

template <>
struct PackedImpl<double> : PlainPackedGemm<double> {
    PackedImpl(const PlainPackedGemm<double>& plain, std::int64_t) : PlainPackedGemm<double>(plain) {}
};

#ifdef REWIND_FLOAT_GEMM_OPENBLAS
template <>
struct PackedImpl<float> : PlainPackedGemm<float> {
    PackedImpl(const PlainPackedGemm<float>& plain, std::int64_t) : PlainPackedGemm<float>(plain) {}
};
#else
template <>
struct PackedImpl<float> {
    PlainPackedGemm<float> plain;
    bool packed = false;
    dnnl::engine engine;
    mutable dnnl::stream stream;
    dnnl::matmul matmul;
    dnnl::memory packed_b;
    mutable dnnl::memory a, c;

    PackedImpl(const PlainPackedGemm<float>& plain_gemm, std::int64_t uses) : plain(plain_gemm) {
        if (uses < PackedGemm<float>::packing_threshold) return;
        packed = true;
        const auto [transpose_b, m, n, k, b, ldb, beta, lda, ldc] = plain;
        engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
        stream = dnnl::stream(engine);
        using dims = dnnl::memory::dims;
        const auto f32 = dnnl::memory::data_type::f32;
        const dnnl::memory::desc a_desc(dims{m, k}, f32, dims{lda, 1});
        const dnnl::memory::desc c_desc(dims{m, n}, f32, dims{ldc, 1});
        // op(B) is [k, n]: B itself is [n, k] (row stride ldb) when transposed, else [k, n].
        const dnnl::memory::desc b_user(dims{k, n}, f32, transpose_b ? dims{1, ldb} : dims{ldb, 1});
        const dnnl::memory::desc b_any(dims{k, n}, f32, dnnl::memory::format_tag::any);
        dnnl::primitive_attr attr;
        if (beta != 0) {
            dnnl::post_ops accumulate;
            accumulate.append_sum(beta);
            attr.set_post_ops(accumulate);
        }
        const dnnl::matmul::primitive_desc desc(dnnl::matmul::desc(a_desc, b_any, c_desc), attr, engine);
        matmul = dnnl::matmul(desc);
        packed_b = dnnl::memory(desc.weights_desc(), engine);
        dnnl::memory user_b(b_user, engine, const_cast<float*>(b));
        dnnl::reorder(user_b, packed_b).execute(stream, user_b, packed_b);
        stream.wait();
        a = dnnl::memory(a_desc, engine, DNNL_MEMORY_NONE);
        c = dnnl::memory(c_desc, engine, DNNL_MEMORY_NONE);
    }

    void run(const float* a_data, float* c_data) const {
        if (!packed) return plain.run(a_data, c_data);
        a.set_data_handle(const_cast<float*>(a_data));
        c.set_data_handle(c_data);
        matmul.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, packed_b}, {DNNL_ARG_DST, c}});
        stream.wait();
    }
};
#endif

template <class T>
struct PackedGemm<T>::Impl : PackedImpl<T> {
    using PackedImpl<T>::PackedImpl;
};

template <class T>
PackedGemm<T>::PackedGemm(bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, const T* b,
                          std::int64_t ldb, T beta, std::int64_t lda, std::int64_t ldc, std::int64_t uses) {
    check(m, n, k);
    impl_ = std::make_unique<Impl>(PlainPackedGemm<T>{transpose_b, m, n, k, b, ldb, beta, lda, ldc}, uses);
}

template <class T>
PackedGemm<T>::~PackedGemm() = default;

template <class T>
void PackedGemm<T>::operator()(const T* a, T* c) const {
    impl_->run(a, c);
}

template class PackedGemm<float>;
template class PackedGemm<double>;

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
