#include "rewind/autograd/gemm.hpp"

#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <stdexcept>
#include <string>
#include <vector>

namespace rw::blas {

namespace {

int thread_count = 1;
std::atomic<Packing> packing_policy{Packing::when_faster};

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
    bool packed() const { return false; }
};

#ifdef REWIND_FLOAT_GEMM_OPENBLAS
template <>
struct PackedImpl<float> : PlainPackedGemm<float> {
    PackedImpl(const PlainPackedGemm<float>& plain, std::int64_t) : PlainPackedGemm<float>(plain) {}
    bool packed() const { return false; }
};
#else
namespace {

// The set-up of one packed product shape, made once per thread and shape: creating a matmul
// primitive descriptor and the weight reorder costs tens of microseconds, as much as all the steps
// of a short sequence at B=1 (a profile of such a training step showed a quarter of it in
// oneDNN's set-up). The primitive itself is made per PackedGemm from the descriptor (oneDNN's own
// cache makes that cheap): one primitive object executed by two threads at once gives wrong
// results (row groups on threads run products of the same shape concurrently).
struct PackedPlan {
    dnnl::matmul::primitive_desc matmul;
    dnnl::reorder reorder;
    dnnl::memory::desc weights, a, c, b_user;
    std::optional<bool> packing_wins;  // decided by the first PackedGemm of this shape (note: Packing)
};

const dnnl::engine& cpu_engine() {
    static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

std::shared_ptr<PackedPlan> packed_plan(const PlainPackedGemm<float>& plain) {
    const auto [transpose_b, m, n, k, b, ldb, beta, lda, ldc] = plain;
    using Key = std::tuple<bool, std::int64_t, std::int64_t, std::int64_t, std::int64_t, float, std::int64_t, std::int64_t>;
    thread_local std::map<Key, std::shared_ptr<PackedPlan>> plans;
    const Key key{transpose_b, m, n, k, ldb, beta, lda, ldc};
    if (auto found = plans.find(key); found != plans.end()) return found->second;
    if (plans.size() >= 64) plans.clear();  // a program with ever new shapes keeps a bounded cache

    auto plan = std::make_shared<PackedPlan>();
    using dims = dnnl::memory::dims;
    const auto f32 = dnnl::memory::data_type::f32;
    plan->a = dnnl::memory::desc(dims{m, k}, f32, dims{lda, 1});
    plan->c = dnnl::memory::desc(dims{m, n}, f32, dims{ldc, 1});
    // op(B) is [k, n]: B itself is [n, k] (row stride ldb) when transposed, else [k, n].
    plan->b_user = dnnl::memory::desc(dims{k, n}, f32, transpose_b ? dims{1, ldb} : dims{ldb, 1});
    const dnnl::memory::desc b_any(dims{k, n}, f32, dnnl::memory::format_tag::any);
    dnnl::primitive_attr attr;
    if (beta != 0) {
        dnnl::post_ops accumulate;
        accumulate.append_sum(beta);
        attr.set_post_ops(accumulate);
    }
    const dnnl::matmul::primitive_desc desc(dnnl::matmul::desc(plan->a, b_any, plan->c), attr, cpu_engine());
    plan->matmul = desc;
    plan->weights = desc.weights_desc();
    plan->reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), plan->b_user, cpu_engine(), plan->weights));
    plans.emplace(key, plan);
    return plan;
}

void check_status(dnnl_status_t status, const char* what) {
    if (status != dnnl_success)
        throw std::runtime_error(std::string("gemm: ") + what + " failed with status " + std::to_string(int(status)));
}

}  // namespace

// Note: Packing. Whether the packed product beats a plain sgemm depends on the machine: where
// oneDNN has a blocked (brgemm) matmul for the CPU, the packed one skips sgemm's packing of B on
// every call (an AVX-512 machine: 89 instead of 110 us for 32x256 by 256x1024); where its matmul
// is itself an sgemm ("gemm:jit", as on AVX2 machines), the "packed" weights are only B
// transposed, which helps at one row (a Zen 1 machine: 4.9 instead of 6.2 us for 1x128 by
// 128x512) and hurts at 32 (520 instead of 415 us for 32x256 by 256x1024). So the first
// PackedGemm of each shape times both on scratch rows, alternately, and the faster minimum is
// kept for that shape on that thread: a choice of speed only (both are the same product).
template <>
struct PackedImpl<float> {
    PlainPackedGemm<float> plain;
    std::shared_ptr<const PackedPlan> plan;
    dnnl::matmul matmul;
    mutable dnnl::stream stream;
    dnnl::memory packed_b;
    mutable dnnl::memory a, c;

    PackedImpl(const PlainPackedGemm<float>& plain_gemm, std::int64_t uses) : plain(plain_gemm) {
        const Packing policy = packing_policy.load();
        if (uses < PackedGemm<float>::packing_threshold || policy == Packing::never) return;
        auto shape_plan = packed_plan(plain);
        if (policy == Packing::when_faster && shape_plan->packing_wins == false) return;
        plan = shape_plan;
        matmul = dnnl::matmul(plan->matmul);
        stream = dnnl::stream(cpu_engine());
        packed_b = dnnl::memory(plan->weights, cpu_engine());
        dnnl::memory user_b(plan->b_user, cpu_engine(), const_cast<float*>(plain.b));
        plan->reorder.execute(stream, user_b, packed_b);
        stream.wait();
        a = dnnl::memory(plan->a, cpu_engine(), DNNL_MEMORY_NONE);
        c = dnnl::memory(plan->c, cpu_engine(), DNNL_MEMORY_NONE);
        if (policy == Packing::always) return;
        if (!shape_plan->packing_wins) shape_plan->packing_wins = packing_is_faster();
        if (!*shape_plan->packing_wins) plan.reset();
    }

    bool packed() const { return plan != nullptr; }

    void run(const float* a_data, float* c_data) const {
        if (!plan) return plain.run(a_data, c_data);
        run_packed(a_data, c_data);
    }

private:
    void run_packed(const float* a_data, float* c_data) const {
        a.set_data_handle(const_cast<float*>(a_data));
        c.set_data_handle(c_data);
        // The C call with a fixed argument array: the C++ execute() builds a hash map of the
        // arguments on every call, a few percent of a B=1 step.
        const dnnl_exec_arg_t args[] = {
            {DNNL_ARG_SRC, a.get()}, {DNNL_ARG_WEIGHTS, packed_b.get()}, {DNNL_ARG_DST, c.get()}};
        check_status(dnnl_primitive_execute(matmul.get(), stream.get(), 3, args), "the packed matmul");
        check_status(dnnl_stream_wait(stream.get()), "the packed matmul's stream");
    }

    bool packing_is_faster() const {
        using clock = std::chrono::steady_clock;
        const std::vector<float> rows(std::size_t(plain.m * plain.lda), 0.5f);
        std::vector<float> out(std::size_t(plain.m * plain.ldc), 0.0f);
        auto best = clock::duration::max(), best_packed = best;
        // Several rounds, alternating: the first call of each warms its code and caches.
        for (int round = 0; round < 6; ++round) {
            auto start = clock::now();
            plain.run(rows.data(), out.data());
            const auto middle = clock::now();
            run_packed(rows.data(), out.data());
            const auto end = clock::now();
            if (round == 0) continue;
            best = std::min(best, middle - start);
            best_packed = std::min(best_packed, end - middle);
        }
        return best_packed <= best;
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

template <class T>
bool PackedGemm<T>::packed() const {
    return impl_->packed();
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

void set_packing(Packing policy) { packing_policy = policy; }
Packing packing() { return packing_policy; }

const char* float_backend() {
#ifdef REWIND_FLOAT_GEMM_OPENBLAS
    return "openblas";
#else
    return "onednn";
#endif
}

}  // namespace rw::blas
