// Random graphs of the public ops: the fuzzer's bytes pick the dtype, leaves (shapes of up to
// three axes, extents 0..6, values among +-huge, +-inf, NaN, subnormals and plain numbers), then
// up to 48 ops on tensors made so far, then a backward (seeded, retained, creating a graph,
// in anomaly mode, run twice) or nothing, and the graph is dropped. A refused combination (shapes
// that do not fit, a freed graph, a NaN in anomaly mode) is an exception of the documented kinds;
// anything else, a crash or a sanitizer report (UBSan with float-cast-overflow) is a finding.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include <rewind/autograd.hpp>

namespace {

constexpr std::size_t kMaxElements = 4096;

template <class T>
T pick_value(FuzzedDataProvider& in) {
    using limits = std::numeric_limits<T>;
    static const T special[] = {T(0), -T(0), T(1), T(-1), T(0.5), T(sizeof(T) == 8 ? 1e300 : 1e38),
                                T(sizeof(T) == 8 ? -1e300 : -1e38), limits::infinity(), -limits::infinity(),
                                limits::quiet_NaN(), limits::denorm_min(), limits::max(), limits::lowest(),
                                T(88), T(-800), T(40)};
    if (in.ConsumeBool()) return special[in.ConsumeIntegralInRange<std::size_t>(0, std::size(special) - 1)];
    return static_cast<T>(in.ConsumeFloatingPointInRange<double>(-10.0, 10.0));
}

template <class T>
rw::Tensor<T> make_leaf(FuzzedDataProvider& in) {
    rw::Shape shape(in.ConsumeIntegralInRange<std::size_t>(0, 3));
    for (auto& extent : shape) extent = in.ConsumeIntegralInRange<std::size_t>(0, 6);
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape);
    const T fill = pick_value<T>(in);
    for (auto& element : value) element = in.ConsumeBool() ? pick_value<T>(in) : fill;
    return rw::Tensor<T>(std::move(value), in.ConsumeBool());
}

template <class T>
std::size_t pick_axis(FuzzedDataProvider& in, const rw::Tensor<T>& x) {
    return in.ConsumeIntegralInRange<std::size_t>(0, x.dim());  // one past the last: refused, or unsqueeze's end
}

// One op on tensors of the pool; the result joins the pool.
template <class T>
std::vector<rw::Tensor<T>> apply_op(FuzzedDataProvider& in, const std::vector<rw::Tensor<T>>& pool) {
    const auto& a = pool[in.ConsumeIntegralInRange<std::size_t>(0, pool.size() - 1)];
    const auto& b = pool[in.ConsumeIntegralInRange<std::size_t>(0, pool.size() - 1)];
    const std::size_t axis = pick_axis(in, a);
    switch (in.ConsumeIntegralInRange<int>(0, 31)) {
        case 0: return {rw::add(a, b)};
        case 1: return {rw::sub(a, b)};
        case 2: return {rw::mul(a, b)};
        case 3: return {rw::div(a, b)};
        case 4: return {rw::neg(a)};
        case 5: return {rw::add_scalar(a, pick_value<T>(in))};
        case 6: return {rw::mul_scalar(a, pick_value<T>(in))};
        case 7: return {rw::tanh(a)};
        case 8: return {rw::sigmoid(a)};
        case 9: return {rw::relu(a)};
        case 10: return {rw::exp(a)};
        case 11: return {rw::log(a)};
        case 12: return {rw::sqrt(a)};
        case 13: return {rw::pow(a, pick_value<T>(in))};
        case 14: {
            const T low = pick_value<T>(in), high = pick_value<T>(in);
            return {rw::clamp(a, low, high)};
        }
        case 15: return {rw::matmul(a, b)};
        case 16: return {rw::gemm(a, b, in.ConsumeBool(), in.ConsumeBool())};
        case 17: return {rw::transpose(a)};
        case 18: return {rw::reshape(a, {a.size()})};
        case 19: return {rw::unsqueeze(a, axis)};
        case 20: return {rw::squeeze(a, axis)};
        case 21: {
            const std::size_t begin = in.ConsumeIntegralInRange<std::size_t>(0, 6);
            return {rw::slice(a, axis, begin, in.ConsumeIntegralInRange<std::size_t>(0, 7))};
        }
        case 22: return {rw::concat<T>({a, b}, axis)};
        case 23: return {rw::stack<T>({a, b}, axis)};
        case 24: return rw::unstack(a, axis);
        case 25: return rw::chunk(a, in.ConsumeIntegralInRange<std::size_t>(1, 4), axis);
        case 26: return {in.ConsumeBool() ? rw::sum(a) : rw::sum(a, {axis}, in.ConsumeBool())};
        case 27: return {in.ConsumeBool() ? rw::mean(a) : rw::mean(a, {axis}, in.ConsumeBool())};
        case 28: return {in.ConsumeBool() ? rw::softmax(a, axis) : rw::log_softmax(a, axis)};
        case 29: return {rw::mse_loss(a, b, in.ConsumeBool() ? rw::Reduction::none : rw::Reduction::mean)};
        case 30: return {rw::broadcast_to(a, b.shape())};
        default: return {rw::sum_to(a, b.shape())};
    }
}

template <class T>
void run(FuzzedDataProvider& in) {
    std::vector<rw::Tensor<T>> pool;
    for (std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 3); n > 0; --n) pool.push_back(make_leaf<T>(in));
    std::optional<rw::AnomalyGuard> anomaly;
    if (in.ConsumeIntegralInRange<int>(0, 7) == 0) anomaly.emplace();
    for (std::size_t n = in.ConsumeIntegralInRange<std::size_t>(0, 48); n > 0 && in.remaining_bytes() > 0; --n) {
        try {
            for (auto& result : apply_op(in, pool))
                if (result.size() <= kMaxElements && pool.size() < 64) pool.push_back(std::move(result));
        } catch (const std::invalid_argument&) {  // ShapeError: the shapes or an argument do not fit
        } catch (const std::out_of_range&) {
        } catch (const rw::AnomalyError&) {
        }
    }
    const rw::Tensor<T> root = pool.back();
    const int passes = in.ConsumeIntegralInRange<int>(0, 2);  // 0: dropped without a backward
    const bool seeded = in.ConsumeBool(), retain = in.ConsumeBool(), create = in.ConsumeBool();
    for (int pass = 0; pass < passes && root.requires_grad(); ++pass) {
        try {
            if (seeded) root.backward(rw::Tensor<T>::full(root.shape(), pick_value<T>(in)), retain, create);
            else root.backward(retain, create);
        } catch (const rw::GraphError&) {  // a second pass through a freed graph, or a root of many elements
        } catch (const rw::AnomalyError&) {
        }
    }
    // Gradients made with create_graph and a leaf's .grad hold each other; zero_grad() frees them.
    for (auto& tensor : pool) tensor.zero_grad();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    if (in.ConsumeBool()) run<double>(in);
    else run<float>(in);
    return 0;
}
