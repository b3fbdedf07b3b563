#include "rewind/dist/reducer.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <chrono>
#include <limits>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "rewind/dist/replicas.hpp"

namespace rw::dist {

template <class T>
struct GradientReducer<T>::State {
    const Communicator* comm;
    nn::NamedTensors<T> parameters;
    ReducerOptions options;
    std::vector<std::vector<std::size_t>> buckets;  // parameter indices, in start order
    struct Slot {
        std::size_t bucket = 0, offset = 0;
    };
    std::vector<Slot> slots;                // per parameter: where its gradient lives
    std::vector<std::vector<T>> data;       // per bucket: the gradients back to back (+ extras in the last)
    std::size_t extras = 0;                 // offset of [flag, weight, had_gradient...] in the last bucket
    std::vector<MPI_Request> requests;      // per bucket
    std::vector<std::size_t> missing;       // per bucket: gradients not yet copied in
    std::vector<char> ready, had_gradient;  // per parameter
    std::size_t next_start = 0;  // buckets started so far (in order)
    bool non_finite = false;
    double weight = 1;

    // Writes weight * (accumulated + gradient) into the parameter's slot; either may be absent.
    void copy_in(std::size_t index, const Tensor<T>& accumulated, const Tensor<T>& gradient) {
        const Slot slot = slots[index];
        T* out = data[slot.bucket].data() + slot.offset;
        const std::size_t n = parameters[index].second.size();
        const T* a = accumulated.defined() ? accumulated.value().data() : nullptr;
        const T* g = gradient.defined() ? gradient.value().data() : nullptr;
        const T w = T(weight);
        // NaN and Inf are the values whose exponent bits are all set; OR-ing that test over the
        // elements vectorises, where a loop of std::isfinite with an early exit does not.
        using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
        constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
        Bits bad = 0;
        auto put = [&](std::size_t j, T v) {
            bad |= Bits((std::bit_cast<Bits>(v) & exponent) == exponent);
            out[j] = w * v;
        };
        // The same sum the engine forms in .grad (accumulated + this pass's gradient).
        if (a && g) for (std::size_t j = 0; j < n; ++j) put(j, a[j] + g[j]);
        else if (const T* one = a ? a : g) for (std::size_t j = 0; j < n; ++j) put(j, one[j]);
        else std::fill(out, out + n, T(0));
        non_finite = non_finite || bad != 0;
        had_gradient[index] = a || g;
        ready[index] = 1;
        if (--missing[slot.bucket] == 0) start_ready_buckets();
    }

    void start_ready_buckets() {
        while (next_start < buckets.size() && missing[next_start] == 0) {
            const std::size_t b = next_start++;
            std::vector<T>& bucket = data[b];
            if (b + 1 == buckets.size()) {
                // Started last, so every local gradient is in by now.
                bucket[extras] = non_finite ? T(1) : T(0);
                bucket[extras + 1] = T(weight);
                for (std::size_t i = 0; i < parameters.size(); ++i) bucket[extras + 2 + i] = had_gradient[i] ? T(1) : T(0);
            }
            check_mpi(MPI_Iallreduce(MPI_IN_PLACE, bucket.data(), int(bucket.size()), mpi_type<T>(), MPI_SUM, comm->comm(),
                                     &requests[b]),
                      "MPI_Iallreduce");
        }
    }

    // MPI moves non-blocking collectives on only inside MPI calls: give it one.
    void progress() {
        if (next_start == 0) return;
        int done = 0;
        check_mpi(MPI_Testall(int(next_start), requests.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    }

    void on_gradient(std::size_t index, const Tensor<T>& gradient) {
        if (!options.overlap) return;
        if (ready[index])
            throw std::logic_error(fmt::format(
                "GradientReducer: parameter '{}' received a second gradient before synchronize(); call synchronize() "
                "after every backward, or accumulate several backward passes with overlap = false",
                parameters[index].first));
        copy_in(index, parameters[index].second.grad(), gradient);
        progress();
    }

    void reset() {
        std::fill(ready.begin(), ready.end(), 0);
        std::fill(had_gradient.begin(), had_gradient.end(), 0);
        for (std::size_t b = 0; b < buckets.size(); ++b) missing[b] = buckets[b].size();
        next_start = 0;
        non_finite = false;
    }
};

template <class T>
GradientReducer<T>::GradientReducer(const Communicator& comm, nn::NamedTensors<T> parameters, ReducerOptions options)
    : state_(std::make_shared<State>()) {
    if (parameters.empty()) throw std::invalid_argument("GradientReducer: no parameters");
    require_same_layout(comm, parameters, "GradientReducer");
    State& s = *state_;
    s.comm = &comm;
    s.parameters = std::move(parameters);
    s.options = options;
    const std::size_t count = s.parameters.size();
    s.slots.resize(count);
    // Reverse registration order: the last parameters (nearest the loss) get gradients first.
    std::size_t bytes = 0;
    for (std::size_t k = count; k-- > 0;) {
        if (s.buckets.empty() || bytes >= options.bucket_bytes) {
            s.buckets.emplace_back();
            s.data.emplace_back();
            bytes = 0;
        }
        const std::size_t n = s.parameters[k].second.size();
        if (n > std::size_t(std::numeric_limits<int>::max()) / 2)
            throw std::invalid_argument(fmt::format("GradientReducer: parameter '{}' is too large for one MPI message",
                                                    s.parameters[k].first));
        s.slots[k] = {s.buckets.size() - 1, s.data.back().size()};
        s.buckets.back().push_back(k);
        s.data.back().resize(s.data.back().size() + n);
        bytes += n * sizeof(T);
    }
    s.extras = s.data.back().size();
    s.data.back().resize(s.extras + 2 + count);
    s.requests.assign(s.buckets.size(), MPI_REQUEST_NULL);
    s.missing.resize(s.buckets.size());
    s.ready.resize(count);
    s.had_gradient.resize(count);
    s.reset();
    // Hooks cannot be removed from a tensor: they hold the state weakly and do nothing once the
    // reducer is gone.
    const std::weak_ptr<State> weak = state_;
    for (std::size_t i = 0; i < count; ++i) {
        Tensor<T> parameter = s.parameters[i].second;
        parameter.register_hook([weak, i](const Tensor<T>& gradient) {
            if (auto state = weak.lock()) state->on_gradient(i, gradient);
        });
    }
}

template <class T>
GradientReducer<T>::~GradientReducer() {
    // Collectives in flight must complete before their buffers go.
    State& s = *state_;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && s.next_start > 0) MPI_Waitall(int(s.next_start), s.requests.data(), MPI_STATUSES_IGNORE);
}

template <class T>
void GradientReducer<T>::set_weight(double weight) {
    if (!(weight >= 0) || !std::isfinite(weight))
        throw std::invalid_argument(fmt::format("GradientReducer::set_weight: needs a finite weight >= 0, got {}", weight));
    if (state_->next_start > 0 || std::find(state_->ready.begin(), state_->ready.end(), 1) != state_->ready.end())
        throw std::logic_error("GradientReducer::set_weight: call it before the step's backward, not during one");
    state_->weight = weight;
}

template <class T>
SyncReport GradientReducer<T>::synchronize() {
    State& s = *state_;
    const auto begin = std::chrono::steady_clock::now();
    SyncReport report;
    report.buckets = s.buckets.size();
    report.started_in_backward = s.next_start;
    // Whatever no hook delivered: the accumulated .grad (overlap off, or no gradient this pass).
    for (std::size_t i = 0; i < s.parameters.size(); ++i)
        if (!s.ready[i]) s.copy_in(i, s.parameters[i].second.grad(), Tensor<T>());
    check_mpi(MPI_Waitall(int(s.buckets.size()), s.requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    report.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();

    const T* extras = s.data.back().data() + s.extras;
    report.finite = extras[0] == T(0);
    report.total_weight = double(extras[1]);
    const bool nothing = !(report.total_weight > 0);
    for (std::size_t i = 0; i < s.parameters.size(); ++i) {
        Tensor<T> parameter = s.parameters[i].second;
        if (extras[2 + i] == T(0) || nothing) {
            parameter.set_grad(Tensor<T>());  // no rank had a gradient for it
            continue;
        }
        const auto slot = s.slots[i];
        const T* sum = s.data[slot.bucket].data() + slot.offset;
        const T total = T(report.total_weight);
        // A fresh array: the local gradient may be held elsewhere (a hook, the caller's seed).
        xt::xarray<T> average = xt::xarray<T>::from_shape(parameter.shape());
        for (std::size_t j = 0, n = parameter.size(); j < n; ++j) average.data()[j] = sum[j] / total;
        parameter.set_grad(Tensor<T>(std::move(average)));
    }
    s.reset();
    return report;
}

template <class T>
const std::vector<std::vector<std::size_t>>& GradientReducer<T>::buckets() const {
    return state_->buckets;
}

template <class T>
const ReducerOptions& GradientReducer<T>::options() const {
    return state_->options;
}

template class GradientReducer<float>;
template class GradientReducer<double>;

}  // namespace rw::dist
