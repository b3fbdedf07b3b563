// The fused interface's layout in numbers and checks: the defaults of CellRules, the flops and
// saved bytes a layout implies, and the check of a cell's weights and a run's arguments against
// its layout (before the driver sizes any buffer from them).

#include <fmt/format.h>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/autograd/errors.hpp>

#include "driver.hpp"

namespace rw::nn::fused {

template <class T>
void CellRules<T>::forward_second(const ForwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but forward_second() is not written");
}

template <class T>
void CellRules<T>::backward_second(const BackwardRow<T>&) const {
    throw std::logic_error("fused rules: the layout has a second stage but backward_second() is not written");
}

template <class T>
void CellRules<T>::forward_tangent(const ForwardTangentRow<T>&) const {
    throw std::logic_error("fused rules: forward_tangent() is not written (has_tangent_rules() should be false)");
}

template <class T>
void CellRules<T>::backward_tangent(const BackwardTangentRow<T>&) const {
    throw std::logic_error("fused rules: backward_tangent() is not written (has_tangent_rules() should be false)");
}

template <class T>
std::vector<std::string> CellRules<T>::gate_names() const {
    std::vector<std::string> names;
    for (std::size_t g = 0; g < layout().gates; ++g) names.push_back(fmt::format("gate {}", g));
    return names;
}

double forward_flops_per_step(const CellLayout& layout, std::size_t batch, std::size_t input, std::size_t hidden,
                              std::size_t output) {
    const double B = double(batch), H = double(hidden), P = double(output > 0 ? output : hidden);
    // The stage-1 product reads h (width P); the projection is one more [B, H] x [H, P] product.
    return 2.0 * B * H * (double(layout.gates) * double(input) + double(layout.recurrent) * P + double(layout.second) * H) +
           (layout.projection ? 2.0 * B * H * P : 0.0);
}

std::size_t saved_bytes_per_step(const CellLayout& layout, std::size_t batch, std::size_t hidden,
                                 std::size_t element_size, bool with_lengths, std::size_t output) {
    // gate buffer [B, G*H], the states before the step (h of width P), the rule's own buffers,
    // q (two-stage) and m (projection).
    const std::size_t h_width = output > 0 ? output : hidden;
    const std::size_t per_row =
        (layout.gates + layout.states - 1 + layout.saved + (layout.second > 0 ? 1 : 0) + (layout.projection ? 1 : 0)) *
            hidden +
        h_width;
    return batch * per_row * element_size + (with_lengths ? batch : 0);
}

template class CellRules<float>;
template class CellRules<double>;

namespace driver {

namespace {

template <class T>
void check_shape(const std::string& op, const char* name, const Tensor<T>& tensor, const Shape& expected) {
    if (!tensor.defined()) throw std::invalid_argument(fmt::format("{}: the cell's {} is missing", op, name));
    if (tensor.shape() != expected)
        throw_shape_error(op, fmt::format("{} has the wrong shape for the cell's layout", name), tensor.shape(), expected);
}

}  // namespace

template <class T>
void check_arguments(const std::string& op, const CellWeights<T>& w, const Tensor<T>& input,
                     const std::vector<Tensor<T>>& initial_state, const std::vector<std::int64_t>& lengths, Dims& d) {
    const CellLayout& l = d.layout;
    if (input.dim() != 3) throw_shape_error(op, "expects a 3-D input [T, B, input_size]", input.shape());
    if (l.gates == 0 || l.states == 0) throw std::invalid_argument(op + ": the layout needs at least one gate block and one state");
    if (l.recurrent_into_gates && l.recurrent > l.gates)
        throw std::invalid_argument(fmt::format("{}: {} recurrent blocks cannot add to {} gate blocks", op, l.recurrent, l.gates));
    d.steps = input.size(0);
    d.batch = input.size(1);
    d.input = input.size(2);
    if (!w.input_weight.defined() || w.input_weight.dim() != 2 || w.input_weight.size(0) % l.gates != 0)
        throw std::invalid_argument(op + ": input_weight must be [G*H, input_size]");
    d.hidden = w.input_weight.size(0) / l.gates;
    const std::size_t H = d.hidden;
    d.output = H;
    if (l.projection) {
        if (l.second > 0) throw std::invalid_argument(op + ": a layout with a projection cannot have a second stage");
        if (!w.projection_weight.defined() || w.projection_weight.dim() != 2 || w.projection_weight.size(0) == 0)
            throw std::invalid_argument(op + ": the layout has a projection; projection_weight must be [P, H]");
        d.output = w.projection_weight.size(0);
        check_shape(op, "projection_weight", w.projection_weight, Shape{d.output, H});
    } else if (w.projection_weight.defined()) {
        throw std::invalid_argument(op + ": projection_weight is given but the layout has no projection");
    }
    // The largest buffers are [T, B, k*H]: the gates, the separate products, the saved states;
    // and [T, B, P] for h. Checked before any is sized from these numbers (a product that wraps
    // would make a buffer smaller than the loops that fill it), in bytes, as every tensor's size is.
    const std::size_t widest = std::max({l.gates, l.recurrent, l.second, l.states + l.saved + 2});
    checked_element_count(op, {d.steps, d.batch, widest, H}, sizeof(T));
    checked_element_count(op, {d.steps, d.batch, d.output}, sizeof(T));
    check_shape(op, "input_weight", w.input_weight, Shape{l.gates * H, d.input});
    if (w.input_bias.defined()) check_shape(op, "input_bias", w.input_bias, Shape{l.gates * H});
    if (l.recurrent > 0) check_shape(op, "recurrent_weight", w.recurrent_weight, Shape{l.recurrent * H, d.output});
    if (w.recurrent_bias.defined()) check_shape(op, "recurrent_bias", w.recurrent_bias, Shape{l.recurrent * H});
    if (l.second > 0) check_shape(op, "gated_state_weight", w.gated_state_weight, Shape{l.second * H, H});
    if (w.units.size() != l.units)
        throw std::invalid_argument(fmt::format("{}: {} per-unit vectors given, the layout has {}", op, w.units.size(), l.units));
    for (const auto& u : w.units) check_shape(op, "per-unit vector", u, Shape{H});
    if (initial_state.size() != l.states)
        throw std::invalid_argument(fmt::format("{}: {} initial state tensors given, expected {}", op,
                                                initial_state.size(), l.states));
    for (std::size_t s = 0; s < l.states; ++s)
        if (initial_state[s].shape() != Shape{d.batch, d.width(s)})
            throw_wrong_shape(op, fmt::format("initial state {}", s), Shape{d.batch, d.width(s)}, initial_state[s].shape());
    if (!lengths.empty()) {
        if (lengths.size() != d.batch)
            throw std::invalid_argument(fmt::format("{}: {} lengths for a batch of {}", op, lengths.size(), d.batch));
        for (auto length : lengths)
            if (length < 1 || length > std::int64_t(d.steps))
                throw std::invalid_argument(fmt::format("{}: length {} outside 1..{}", op, length, d.steps));
    }
    // Zero rows (an empty batch) run as PyTorch's do: empty outputs, zero weight gradients.
    if (d.steps == 0) throw_shape_error(op, "needs at least one step", input.shape());
}

template void check_arguments(const std::string&, const CellWeights<float>&, const Tensor<float>&,
                              const std::vector<Tensor<float>>&, const std::vector<std::int64_t>&, Dims&);
template void check_arguments(const std::string&, const CellWeights<double>&, const Tensor<double>&,
                              const std::vector<Tensor<double>>&, const std::vector<std::int64_t>&, Dims&);

}  // namespace driver

}  // namespace rw::nn::fused
