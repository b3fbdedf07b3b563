// Options shared by the subcommands.

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <rewind/autograd/gemm.hpp>

#include "commands.hpp"

namespace rw::cli {

// The validators see the text as typed, before CLI11 converts it: "-1" is refused here, where
// the conversion to an unsigned type would wrap it to 18446744073709551615.
CLI::Validator integer_in(std::uint64_t low, std::uint64_t high) {
    const std::string range = high == std::numeric_limits<std::uint64_t>::max()
                                  ? fmt::format("a whole number >= {}", low)
                                  : fmt::format("a whole number from {} to {}", low, high);
    return CLI::Validator(
        [=](std::string& text) -> std::string {
            const bool digits = !text.empty() && text.size() <= 20 &&
                                text.find_first_not_of("0123456789") == std::string::npos;
            errno = 0;
            const unsigned long long value = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
            if (!digits || errno == ERANGE || value < low || value > high)
                return fmt::format("must be {}, got '{}'", range, text);
            return {};
        },
        range);
}

CLI::Validator finite_number(double low, Bound bound) {
    const std::string range = bound == Bound::none ? std::string("a finite number")
                              : fmt::format("a finite number {} {:g}", bound == Bound::above ? ">" : ">=", low);
    return CLI::Validator(
        [=](std::string& text) -> std::string {
            char* end = nullptr;
            const double value = text.empty() ? NAN : std::strtod(text.c_str(), &end);
            const bool parsed = !text.empty() && end == text.c_str() + text.size();
            const bool fits = bound == Bound::none || (bound == Bound::above ? value > low : value >= low);
            if (!parsed || !std::isfinite(value) || !fits) return fmt::format("must be {}, got '{}'", range, text);
            return {};
        },
        range);
}

void add_threads_option(CLI::App& command, int& threads) {
    command.add_option("--threads", threads, "BLAS threads")->capture_default_str()->check(integer_in(1, max_threads));
}

void apply_threads(int threads) { rw::blas::set_num_threads(threads); }

void add_path_option(CLI::App& command, std::string& path, bool allow_both) {
    std::vector<std::string> names{"generic", "fused"};
    if (allow_both) names.push_back("both");
    command.add_option("--path", path, "generic: every op of every step on the tape; fused: whole-sequence kernels")
        ->capture_default_str()
        ->check(CLI::IsMember(names));
}

std::vector<nn::ExecutionPath> paths_of(const std::string& path) {
    if (path == "fused") return {nn::ExecutionPath::fused};
    if (path == "both") return {nn::ExecutionPath::generic, nn::ExecutionPath::fused};
    return {nn::ExecutionPath::generic};
}

std::string path_name(nn::ExecutionPath path) { return path == nn::ExecutionPath::fused ? "fused" : "generic"; }

CLI::Option* add_cell_option(CLI::App& command, std::string& cell) {
    return command.add_option("--cell", cell, "cell type (the table of cells: rewind cells)")
        ->check(CLI::IsMember(nn::cell_names()));
}

void add_layer_options(CLI::App& command, LayerConfig& config) {
    add_cell_option(command, config.cell)->required();
    command.add_option("--input-size", config.input_size, "features per step (I)")
        ->required()
        ->check(integer_in(1, max_size));
    command.add_option("--hidden-size", config.hidden_size, "hidden units (H)")->required()->check(integer_in(1, max_size));
    command.add_option("--layers", config.layers, "stacked layers (L)")
        ->capture_default_str()
        ->check(integer_in(1, max_layers));
    command.add_flag("--bidirectional", config.bidirectional, "run both directions (D = 2)");
}

void add_bias_and_projection_options(CLI::App& command, bool& bias, std::size_t& proj_size) {
    command.add_flag("--no-bias{false}", bias, "no bias_ih, bias_hh (PyTorch's bias=False)");
    command.add_option("--proj-size", proj_size, "LSTM with projections: h has this many units (< H)")
        ->check(CLI::PositiveNumber);
}

void add_structure_options(CLI::App& command, LayerConfig& config) {
    add_bias_and_projection_options(command, config.bias, config.proj_size);
    command.callback([&config] { check_projection(config.cell, config.hidden_size, config.proj_size); });
}

std::vector<std::string> cells_with_projection() {
    std::vector<std::string> names;
    for (const auto& info : nn::cell_table())
        if (info.supports_projection) names.push_back(info.name);
    return names;
}

void check_projection(const std::string& cell, std::size_t hidden_size, std::size_t proj_size) {
    if (proj_size == 0) return;
    if (!nn::cell_info(cell).supports_projection)
        throw CLI::ValidationError("--proj-size", fmt::format("applies to --cell {} only, got --cell {}",
                                                              fmt::join(cells_with_projection(), " or "), cell));
    if (proj_size >= hidden_size)
        throw CLI::ValidationError("--proj-size", "must be smaller than --hidden-size " + std::to_string(hidden_size));
}

}  // namespace rw::cli
