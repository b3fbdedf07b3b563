#include "rewind/nn/train/tbptt.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include <rewind/autograd/errors.hpp>
#include <rewind/autograd/ops.hpp>

namespace rw::nn {

namespace {

template <class T>
std::vector<Tensor<T>> detached(const std::vector<Tensor<T>>& state) {
    std::vector<Tensor<T>> out;
    for (const auto& tensor : state) out.push_back(tensor.detach());
    return out;
}

}  // namespace

template <class T>
std::vector<Tensor<T>> truncated_bptt(Recurrent<T>& layer, const Tensor<T>& stream, const TbpttOptions& options,
                                      const ChunkLoss<T>& loss, const ChunkStep<T>& step,
                                      std::vector<Tensor<T>> initial_state) {
    if (stream.dim() != 3) throw_shape_error("truncated_bptt", "the stream must be [T, B, I]", stream.shape());
    return truncated_bptt<T>(
        layer, stream.size(0), [&stream](std::size_t from, std::size_t to) { return slice(stream, 0, from, to); },
        options, loss, step, std::move(initial_state));
}

template <class T>
std::vector<Tensor<T>> truncated_bptt(Recurrent<T>& layer, std::size_t total_steps, const WindowInput<T>& input,
                                      const TbpttOptions& options, const ChunkLoss<T>& loss, const ChunkStep<T>& step,
                                      std::vector<Tensor<T>> initial_state) {
    const std::size_t k1 = options.k1, k2 = options.k2 == 0 ? options.k1 : options.k2;
    if (k1 == 0 || k2 < k1)
        throw std::invalid_argument(fmt::format("truncated_bptt: needs k1 >= 1 and k2 >= k1, got k1 = {}, k2 = {}", k1, k2));
    if (layer.options().bidirectional || layer.options().batch_first)
        throw std::invalid_argument("truncated_bptt: needs a unidirectional, time-major (batch_first = false) layer");
    const std::size_t total = total_steps;
    auto window_start = [&](std::size_t end) { return end > k2 ? end - k2 : 0; };

    // The state at the current window's start; empty means the layer's own initial state.
    std::vector<Tensor<T>> window_state = std::move(initial_state);
    std::vector<Tensor<T>> final_state = window_state;
    for (std::size_t begin = 0, index = 0; begin < total; begin += k1, ++index) {
        const std::size_t end = std::min(begin + k1, total);
        const std::size_t window = window_start(end);
        // The next window starts at `split` (window <= split <= end because k2 >= k1); run up to
        // there first, to take the state the next chunk starts from.
        const std::size_t split = end < total ? window_start(std::min(end + k1, total)) : end;
        std::vector<Tensor<T>> outputs, state = window_state, next_window_state = window_state;
        for (auto [from, to] : {std::pair{window, split}, std::pair{split, end}}) {
            if (from == to) continue;
            const Tensor<T> window_input = input(from, to);
            if (window_input.dim() != 3 || window_input.size(0) != to - from)
                throw_shape_error("truncated_bptt", fmt::format("the input of steps [{}, {}) must be [{}, B, I]", from, to, to - from),
                                  window_input.shape());
            auto result = layer.forward(window_input, state);
            outputs.push_back(result.output);
            state = result.state;
            if (to == split) next_window_state = detached(state);
        }
        const Tensor<T> window_outputs = outputs.size() == 1 ? outputs[0] : concat(outputs, 0);
        const Tensor<T> chunk_loss = loss(slice(window_outputs, 0, begin - window, end - window), begin, end);
        if (chunk_loss.size() != 1)
            throw_shape_error("truncated_bptt", "the loss callback must return a scalar", chunk_loss.shape());
        chunk_loss.backward();
        final_state = detached(state);
        window_state = std::move(next_window_state);
        step(TbpttChunk<T>{index, begin, end, window, double(chunk_loss.item()), final_state});
    }
    return final_state;
}

template std::vector<Tensor<float>> truncated_bptt(Recurrent<float>&, const Tensor<float>&, const TbpttOptions&,
                                                   const ChunkLoss<float>&, const ChunkStep<float>&,
                                                   std::vector<Tensor<float>>);
template std::vector<Tensor<double>> truncated_bptt(Recurrent<double>&, const Tensor<double>&, const TbpttOptions&,
                                                    const ChunkLoss<double>&, const ChunkStep<double>&,
                                                    std::vector<Tensor<double>>);
template std::vector<Tensor<float>> truncated_bptt(Recurrent<float>&, std::size_t, const WindowInput<float>&,
                                                   const TbpttOptions&, const ChunkLoss<float>&,
                                                   const ChunkStep<float>&, std::vector<Tensor<float>>);
template std::vector<Tensor<double>> truncated_bptt(Recurrent<double>&, std::size_t, const WindowInput<double>&,
                                                    const TbpttOptions&, const ChunkLoss<double>&,
                                                    const ChunkStep<double>&, std::vector<Tensor<double>>);

}  // namespace rw::nn
