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
Command add_cells_command(CLI::App& app);

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
    bool bias = true;            // --no-bias
    std::size_t proj_size = 0;   // --proj-size, cells with projections only (the table of cells)

    std::size_t directions() const { return bidirectional ? 2 : 1; }
    // The width of h and of each direction's output: proj_size when set, else hidden_size.
    std::size_t output_size() const { return proj_size > 0 ? proj_size : hidden_size; }
    // A second state tensor c besides h (LSTM), from the table of cells.
    bool has_cell_state() const { return nn::cell_info(cell).state_names.size() > 1; }
    // The layer these options describe (the caller adds seed, path and the like).
    nn::RecurrentOptions recurrent_options() const {
        return {.input_size = input_size, .hidden_size = hidden_size, .num_layers = layers, .bidirectional = bidirectional,
                .bias = bias, .proj_size = proj_size};
    }
    // ", no bias", ", proj_size 2", ...: what the reports add to the sizes.
    std::string structure_note() const {
        return std::string(bias ? "" : ", no bias") + (proj_size > 0 ? ", proj_size " + std::to_string(proj_size) : "");
    }
};
void add_layer_options(CLI::App& command, LayerConfig& config);
// PyTorch's structural options of every command that builds a layer: --no-bias, --proj-size
// (checked against --cell and --hidden-size once parsed).
void add_structure_options(CLI::App& command, LayerConfig& config);
// The two options alone, for a command that checks its cells itself (check-fused).
void add_bias_and_projection_options(CLI::App& command, bool& bias, std::size_t& proj_size);
// --proj-size on `cell`: a CLI::ValidationError unless the table of cells says it takes projections
// and proj_size < hidden_size (0: no projection, always fine).
void check_projection(const std::string& cell, std::size_t hidden_size, std::size_t proj_size);
std::vector<std::string> cells_with_projection();
// --cell, checked against the table of cells.
CLI::Option* add_cell_option(CLI::App& command, std::string& cell);

}  // namespace rw::cli
