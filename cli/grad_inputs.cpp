#include "grad_inputs.hpp"

#include <cmath>
#include <iostream>
#include <set>
#include <type_traits>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace rw::cli {

namespace {

using Shape = std::vector<std::size_t>;

const std::set<std::string> known_inputs{"x", "h0", "c0", "lengths", "grad_output", "grad_h_n", "grad_c_n"};
const std::set<std::string> lstm_only{"c0", "grad_c_n"};

// Checks of one INPUTS file; every message names the file and the tensor.
class InputsChecker {
public:
    InputsChecker(const GradRequest& request, const nn::TensorMap& inputs)
        : file_(request.inputs_file.string()), config_(request.layer), inputs_(inputs) {}

    [[noreturn]] void fail(const std::string& name, const std::string& what) const {
        throw CommandError(fmt::format("{}: tensor '{}': {}", file_, name, what));
    }

    void check_names() const {
        for (const auto& [name, array] : inputs_) {
            if (!known_inputs.contains(name))
                fail(name, fmt::format("unknown input (expected some of: {})", fmt::join(known_inputs, ", ")));
            if (lstm_only.contains(name) && !config_.has_cell_state())
                fail(name, fmt::format("only an LSTM has a cell state, and --cell is {}", config_.cell));
        }
        for (const std::string required : {"x", "grad_output"})
            if (!inputs_.contains(required)) fail(required, "missing (x and grad_output are required)");
    }

    // x fixes the dtype of the whole computation; every other floating-point tensor must match.
    std::string check_dtypes() const {
        const std::string dtype = nn::dtype_name(inputs_.at("x"));
        if (dtype != "F32" && dtype != "F64") fail("x", fmt::format("dtype {}, expected F32 or F64", dtype));
        for (const auto& [name, array] : inputs_) {
            const std::string expected = name == "lengths" ? "I64" : dtype;
            if (nn::dtype_name(array) != expected)
                fail(name, fmt::format("dtype {}, expected {}{}", nn::dtype_name(array), expected,
                                       name == "lengths" ? "" : " like x (mixed dtypes are not supported)"));
        }
        return dtype;
    }

    void check_shapes() const {
        const Shape x = nn::shape_of(inputs_.at("x"));
        if (x.size() != 3 || x[2] != config_.input_size || x[0] == 0 || x[1] == 0)
            fail("x", fmt::format("shape [{}], expected [T, B, {}] with T, B >= 1 (--input-size {})", fmt::join(x, ", "),
                                  config_.input_size, config_.input_size));
        const std::size_t steps = x[0], batch = x[1], hidden = config_.hidden_size, out = config_.output_size();
        const std::size_t streams = checked_product("--layers x directions", config_.layers, config_.directions());
        const Shape state{streams, batch, hidden};
        const Shape h_state{streams, batch, out};
        const std::string h_meaning = config_.proj_size > 0 ? "[L*D, B, proj_size]" : "[L*D, B, H]";
        expect("grad_output", {steps, batch, config_.directions() * out},
               config_.proj_size > 0 ? "[T, B, D*proj_size]" : "[T, B, D*H]");
        for (const std::string name : {"h0", "grad_h_n"}) expect(name, h_state, h_meaning);
        for (const std::string name : {"c0", "grad_c_n"}) expect(name, state, "[L*D, B, H]");
        expect("lengths", {batch}, "[B]");
    }

    std::optional<std::vector<std::int64_t>> lengths() const {
        if (!inputs_.contains("lengths")) return std::nullopt;
        const auto& array = std::get<xt::xarray<std::int64_t>>(inputs_.at("lengths"));
        const auto steps = static_cast<std::int64_t>(nn::shape_of(inputs_.at("x"))[0]);
        std::vector<std::int64_t> lengths(array.begin(), array.end());
        for (std::size_t b = 0; b < lengths.size(); ++b)
            if (lengths[b] < 1 || lengths[b] > steps)
                fail("lengths", fmt::format("length {} of sequence {} is outside 1..{} (T, the steps of x)", lengths[b],
                                            b, steps));
        return lengths;
    }

private:
    void expect(const std::string& name, const Shape& shape, const std::string& meaning) const {
        if (!inputs_.contains(name)) return;
        const Shape actual = nn::shape_of(inputs_.at(name));
        if (actual != shape)
            fail(name, fmt::format("shape [{}], expected [{}] ({})", fmt::join(actual, ", "), fmt::join(shape, ", "),
                                   meaning));
    }

    std::string file_;
    const LayerConfig& config_;
    const nn::TensorMap& inputs_;
};

// The layers and directions the configuration asks for must be in STATE before a layer is built
// from them: one name per layer and direction is looked up, and the first missing one ends the
// search, so a huge --layers costs as many look-ups as the file has tensors.
void check_state_layers(const GradRequest& request, const nn::TensorMap& state) {
    const LayerConfig& config = request.layer;
    for (std::size_t layer = 0; layer < config.layers; ++layer)
        for (std::size_t direction = 0; direction < config.directions(); ++direction) {
            const std::string name = fmt::format("weight_ih_l{}{}", layer, direction == 1 ? "_reverse" : "");
            if (!state.contains(name))
                throw CommandError(fmt::format(
                    "{}: no tensor '{}', which --layers {}{} needs (expected weight_ih_l0 to weight_ih_l{}{}; the file "
                    "holds {} tensors)",
                    request.state_file.string(), name, config.layers, config.bidirectional ? " --bidirectional" : "",
                    config.layers - 1, config.bidirectional ? " and their _reverse" : "", state.size()));
        }
}

// NaN or Inf in an input make every output they reach NaN; each tensor holding them is named, as
// a warning on stderr, or as the error with --check-finite.
void report_non_finite(const GradRequest& request, const std::string& file, const nn::TensorMap& tensors) {
    for (const auto& [name, stored] : tensors) {
        std::size_t nan = 0, inf = 0, first = 0;
        std::visit(
            [&](const auto& array) {
                using Element = typename std::decay_t<decltype(array)>::value_type;
                if constexpr (std::is_floating_point_v<Element>)
                    for (std::size_t i = 0; i < array.size(); ++i) {
                        const Element v = array.data()[i];
                        if (std::isfinite(v)) continue;
                        if (nan + inf == 0) first = i;
                        ++(std::isnan(v) ? nan : inf);
                    }
            },
            stored);
        if (nan + inf == 0) continue;
        const std::string what = fmt::format("{}: tensor '{}' holds {} NaN and {} Inf (first at flat index {})", file,
                                             name, nan, inf, first);
        if (request.check_finite) throw CommandError(what + " (--check-finite)");
        std::cerr << "rewind grad: warning: " << what << "; the outputs and gradients it reaches will not be finite"
                  << std::endl;
    }
}

}  // namespace

GradData load_grad_data(const GradRequest& request) {
    GradData data;
    data.inputs = nn::load_safetensors(request.inputs_file);
    const InputsChecker checker(request, data.inputs);
    checker.check_names();
    data.dtype = checker.check_dtypes();
    checker.check_shapes();
    data.lengths = checker.lengths();

    data.state = nn::load_safetensors(request.state_file);
    // load_state_dict would convert F32 and F64 silently; a mixed computation is refused instead.
    for (const auto& [name, array] : data.state)
        if (nn::dtype_name(array) != data.dtype)
            throw CommandError(fmt::format("{}: tensor '{}': dtype {}, but the inputs are {} (mixed dtypes are not supported)",
                                           request.state_file.string(), name, nn::dtype_name(array), data.dtype));
    check_state_layers(request, data.state);
    report_non_finite(request, request.inputs_file.string(), data.inputs);
    report_non_finite(request, request.state_file.string(), data.state);
    return data;
}

}  // namespace rw::cli
