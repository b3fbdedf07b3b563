// rewind cells: the table of cells (nn::cell_table()) that --cell chooses from: name, gate
// blocks, states, the layer options each takes, whether it has fused rules.

#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <rewind/nn/layers/cell_table.hpp>

#include "commands.hpp"

namespace rw::cli {

namespace {

// The command-line options of the layer commands that the cell takes.
std::vector<std::string> options_of(const nn::CellInfo& info) {
    std::vector<std::string> options{"--no-bias"};  // every built-in cell has PyTorch's bias option
    if (info.supports_projection) options.push_back("--proj-size");
    return options;
}

int run_cells(bool json) {
    const auto& table = nn::cell_table();
    if (json) {
        nlohmann::json cells = nlohmann::json::array();
        for (const auto& info : table)
            cells.push_back({{"name", info.name},
                             {"description", info.description},
                             {"gates", info.gates},
                             {"gate_names", info.gate_names},
                             {"states", info.state_names},
                             {"options", options_of(info)},
                             {"fused", info.fused}});
        std::cout << cells.dump(2) << '\n';
        return 0;
    }
    fmt::print("{:<9} {:<34} {:<7} {:<22} {:<6} {}\n", "cell", "gates", "states", "options", "fused", "description");
    for (const auto& info : table)
        fmt::print("{:<9} {:<34} {:<7} {:<22} {:<6} {}\n", info.name,
                   fmt::format("{} ({})", info.gates, fmt::join(info.gate_names, ", ")),
                   fmt::format("{}", fmt::join(info.state_names, ", ")), fmt::format("{}", fmt::join(options_of(info), " ")),
                   info.fused ? "yes" : "no", info.description);
    return 0;
}

}  // namespace

Command add_cells_command(CLI::App& app) {
    auto json = std::make_shared<bool>(false);
    CLI::App* command = app.add_subcommand(
        "cells", "the table of cells --cell chooses from: gates, states, the options each takes, fused or not");
    command->add_flag("--json", *json, "one JSON array, an object per cell");
    return {command, [json] { return run_cells(*json); }};
}

}  // namespace rw::cli
