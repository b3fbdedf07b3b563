#pragma once
// The `rewind` subcommands. Each add_*_command() declares its options on the top-level app and
// returns what main() runs once the command line has been parsed; main() owns the error
// reporting, so every command only throws.

#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <rewind/autograd/checked_size.hpp>
#include <rewind/nn/layers/cell_table.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace rw::cli {

// Bad input that the user can fix; main() prints "rewind <command>: <message>" as one line and
// exits with 1.
struct CommandError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;  // the exit code; throws on bad input
};

Command add_grad_command(CLI::App& app);
Command add_gradcheck_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_flow_command(CLI::App& app);
Command add_check_fused_command(CLI::App& app);

// Upper bounds of the size options: far beyond what a layer on one machine uses, and small enough
// that no product of two of them overflows; products of more are checked where tensors are made.
inline constexpr std::uint64_t max_size = 1 << 20;  // --input-size, --hidden-size, --seq-len, --batch
inline constexpr std::uint64_t max_layers = 1024;
inline constexpr std::uint64_t max_threads = 1024;
inline constexpr std::uint64_t max_rounds = 1'000'000;  // repeats, iterations and the like

// Validators with one short readable message each, e.g. "--seq-len: must be a whole number from 1
// to 1048576, got '0'" (CLI11's own print their bounds as 300-digit numbers and accept NaN).
CLI::Validator integer_in(std::uint64_t low, std::uint64_t high);
enum class Bound { none, above, at_least };  // no bound, > low, >= low
CLI::Validator finite_number(double low = 0, Bound bound = Bound::none);

// --threads N of every command, applied with apply_threads() before any computation.
void add_threads_option(CLI::App& command, int& threads);
void apply_threads(int threads);

// --path: the execution paths a command runs its layer on, "generic", "fused" or (where
// allowed) "both", each in turn.
void add_path_option(CLI::App& command, std::string& path, bool allow_both);
std::vector<nn::ExecutionPath> paths_of(const std::string& path);
std::string path_name(nn::ExecutionPath path);

// The one place where a command puts its layer on an execution path.
template <class T>
void choose_path(nn::Recurrent<T>& layer, nn::ExecutionPath path) {
    layer.set_path(path);
}

// The shared layer options of both commands.
struct LayerConfig {
    std::string cell;
    std::size_t input_size = 0;
    std::size_t hidden_size = 0;
    std::size_t layers = 1;
    bool bidirectional = false;
    bool bias = true;            // --no-bias (grad, gradcheck)
    std::size_t proj_size = 0;   // --proj-size, LSTM only (grad, gradcheck)

    std::size_t directions() const { return bidirectional ? 2 : 1; }
    // The width of h and of each direction's output: proj_size when set, else hidden_size.
    std::size_t output_size() const { return proj_size > 0 ? proj_size : hidden_size; }
    // A second state tensor c besides h (LSTM), from the table of cells.
    bool has_cell_state() const { return nn::cell_info(cell).state_names.size() > 1; }
};
void add_layer_options(CLI::App& command, LayerConfig& config);
// PyTorch's structural options: --no-bias, --proj-size.
void add_structure_options(CLI::App& command, LayerConfig& config);
// --cell, checked against the table of cells.
CLI::Option* add_cell_option(CLI::App& command, std::string& cell);

}  // namespace rw::cli
