// Options shared by the subcommands.

#include <rewind/autograd/gemm.hpp>

#include "commands.hpp"

namespace rw::cli {

void add_threads_option(CLI::App& command, int& threads) {
    command.add_option("--threads", threads, "BLAS threads")->capture_default_str()->check(CLI::PositiveNumber);
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
        ->check(CLI::PositiveNumber);
    command.add_option("--hidden-size", config.hidden_size, "hidden units (H)")->required()->check(CLI::PositiveNumber);
    command.add_option("--layers", config.layers, "stacked layers (L)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    command.add_flag("--bidirectional", config.bidirectional, "run both directions (D = 2)");
}

}  // namespace rw::cli
