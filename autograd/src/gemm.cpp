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
std::atomic<RepeatedGemm> repeated_gemm_policy{RepeatedGemm::fastest};

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

// A product over k = 0 (a layer with input_size 0) is empty: C = beta C, zeros for beta = 0 as
// BLAS defines it. BLAS itself refuses the call (a leading dimension 0 < max(1, k)).
template <class T>
void scale(std::int64_t m, std::int64_t n, T beta, T* c, std::int64_t ldc) {
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
}

}  // namespace

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc) {
    check(m, n, k);
    if (m == 0 || n == 0) return;
    if (k == 0) return scale(m, n, beta, c, ldc);
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
    if (k == 0) return scale(m, n, beta, c, ldc);
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
    RepeatedGemm used() const { return RepeatedGemm::plain; }
};

#ifdef REWIND_FLOAT_GEMM_OPENBLAS
template <>
struct PackedImpl<float> : PlainPackedGemm<float> {
    PackedImpl(const PlainPackedGemm<float>& plain, std::int64_t) : PlainPackedGemm<float>(plain) {}
    RepeatedGemm used() const { return RepeatedGemm::plain; }
};
#else
namespace {

// Note [Repeated products]: which way of computing c = a op(B) many times with the same B is
// fastest depends on the machine and the shape. Where oneDNN has a blocked (brgemm) matmul for the
// CPU, packing B once skips sgemm's packing of it on every call. Where its matmul is itself an
// sgemm ("gemm:jit", as on AVX2 machines), the "packed" weights are only B transposed, which helps
// at one row and loses at 32, while the transposed product c^T = op(B)^T a^T, added into c in
// tiles, is faster there at 16 and 32 rows (the measurements are in docs/bench.md).
// So the first PackedGemm of each shape on a thread times the three on scratch rows, alternately,
// and keeps the fastest for that shape: a choice of speed only (the same product, rounded in
// another order).
struct PackedPlan {
    dnnl::matmul::primitive_desc matmul;
    dnnl::reorder reorder;
    dnnl::memory::desc weights, a, c, b_user;
    std::optional<RepeatedGemm> fastest;  // decided by the first PackedGemm of this shape
};

const dnnl::engine& cpu_engine() {
    static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

// The set-up of one packed product shape, made once per thread and shape: creating a matmul
// primitive descriptor and the weight reorder costs tens of microseconds, as much as all the steps
// of a short sequence at B=1 (a profile of such a training step showed a quarter of it in
// oneDNN's set-up). The primitive itself is made per PackedGemm from the descriptor (oneDNN's own
// cache makes that cheap): one primitive object executed by two threads at once gives wrong
// results (row groups on threads run products of the same shape concurrently).
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

template <>
struct PackedImpl<float> {
    PlainPackedGemm<float> plain;
    RepeatedGemm strategy = RepeatedGemm::plain;
    std::shared_ptr<const PackedPlan> plan;
    dnnl::matmul matmul;
    mutable dnnl::stream stream;
    dnnl::memory packed_b;
    mutable dnnl::memory a, c;
    mutable std::vector<float> transposed;  // c^T [n, m] of the transposed product

    PackedImpl(const PlainPackedGemm<float>& plain_gemm, std::int64_t uses) : plain(plain_gemm) {
        if (uses < PackedGemm<float>::packing_threshold) return;
        RepeatedGemm way = repeated_gemm_policy.load();
        if (way == RepeatedGemm::fastest) {
            const auto shape_plan = packed_plan(plain);
            if (!shape_plan->fastest) shape_plan->fastest = fastest();
            way = *shape_plan->fastest;
        }
        use(way);
    }

    RepeatedGemm used() const { return strategy; }

    void run(const float* a_data, float* c_data) const {
        switch (strategy) {
            case RepeatedGemm::packed: return run_packed(a_data, c_data);
            case RepeatedGemm::transposed: return run_transposed(a_data, c_data);
            default: return plain.run(a_data, c_data);
        }
    }

private:
    // Sets up `way` (packed, plain or transposed) and lets go of what the others hold.
    void use(RepeatedGemm way) {
        strategy = way;
        if (way == RepeatedGemm::packed && !plan) set_up_packed();
        if (way != RepeatedGemm::packed) {
            plan.reset();
            matmul = dnnl::matmul();
            packed_b = dnnl::memory();
        }
        if (way == RepeatedGemm::transposed) transposed.assign(std::size_t(plain.n * plain.m), 0.0f);
        else transposed = {};
    }

    void set_up_packed() {
        plan = packed_plan(plain);
        matmul = dnnl::matmul(plan->matmul);
        stream = dnnl::stream(cpu_engine());
        packed_b = dnnl::memory(plan->weights, cpu_engine());
        dnnl::memory user_b(plan->b_user, cpu_engine(), const_cast<float*>(plain.b));
        plan->reorder.execute(stream, user_b, packed_b);
        stream.wait();
        a = dnnl::memory(plan->a, cpu_engine(), DNNL_MEMORY_NONE);
        c = dnnl::memory(plan->c, cpu_engine(), DNNL_MEMORY_NONE);
    }

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

    // c^T [n, m] = op(B)^T a^T, then c = c^T^T + beta c in tiles (both sides stay in cache).
    void run_transposed(const float* a_data, float* c_data) const {
        const auto [transpose_b, m, n, k, b, ldb, beta, lda, ldc] = plain;
        float* t = transposed.data();
        gemm(!transpose_b, true, n, m, k, 1.0f, b, ldb, a_data, lda, 0.0f, t, m);
        constexpr std::int64_t tile = 16;
        for (std::int64_t j0 = 0; j0 < n; j0 += tile) {
            const std::int64_t j1 = std::min(n, j0 + tile);
            for (std::int64_t i = 0; i < m; ++i) {
                float* row = c_data + i * ldc;
                if (beta == 0.0f)
                    for (std::int64_t j = j0; j < j1; ++j) row[j] = t[j * m + i];
                else
                    for (std::int64_t j = j0; j < j1; ++j) row[j] = t[j * m + i] + beta * row[j];
            }
        }
    }

    RepeatedGemm fastest() {
        using clock = std::chrono::steady_clock;
        const std::vector<float> rows(std::size_t(plain.m * plain.lda), 0.5f);
        std::vector<float> out(std::size_t(plain.m * plain.ldc), 0.0f);
        set_up_packed();
        transposed.assign(std::size_t(plain.n * plain.m), 0.0f);
        const RepeatedGemm ways[] = {RepeatedGemm::plain, RepeatedGemm::packed, RepeatedGemm::transposed};
        std::vector<clock::duration> times[3];
        auto round = [&] {
            for (int w = 0; w < 3; ++w) {
                strategy = ways[w];
                const auto start = clock::now();
                run(rows.data(), out.data());
                times[w].push_back(clock::now() - start);
            }
        };
        // A warm-up round, then alternating rounds within about 20 ms (3 to 11 of them), the
        // median of each way compared: single calls of a few hundred microseconds are noisy.
        round();
        const auto warm_up = times[0][0] + times[1][0] + times[2][0];
        const auto budget = std::chrono::duration_cast<clock::duration>(std::chrono::milliseconds(20));
        const int rounds = int(std::clamp<std::int64_t>(budget / std::max(warm_up, clock::duration(1)), 3, 11));
        for (auto& t : times) t.clear();
        for (int r = 0; r < rounds; ++r) round();
        clock::duration median[3];
        for (int w = 0; w < 3; ++w) {
            std::nth_element(times[w].begin(), times[w].begin() + rounds / 2, times[w].end());
            median[w] = times[w][std::size_t(rounds / 2)];
        }
        return ways[std::min_element(median, median + 3) - median];
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
RepeatedGemm PackedGemm<T>::used() const {
    return impl_->used();
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

void set_repeated_gemm(RepeatedGemm policy) { repeated_gemm_policy = policy; }
RepeatedGemm repeated_gemm() { return repeated_gemm_policy; }

const char* float_backend() {
#ifdef REWIND_FLOAT_GEMM_OPENBLAS
    return "openblas";
#else
    return "onednn";
#endif
}

}  // namespace rw::blas
