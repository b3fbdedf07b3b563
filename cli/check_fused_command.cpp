// rewind check-fused: each built-in cell's hand-written fused rules against the tape's derivative
// of its own step(), per time step and tensor, in float64 (nn::check_fused_cell). Exit code 1
// when any cell disagrees, with the first divergence named on stderr.

#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <rewind/autograd/random.hpp>
#include <rewind/nn/fused/check.hpp>

#include "commands.hpp"

namespace rw::cli {

namespace {

struct CheckFusedRequest {
    std::vector<std::string> cells;  // empty: every cell of the table (that takes --proj-size when given)
    std::size_t input_size = 3, hidden_size = 5;
    bool bias = true;
    std::size_t proj_size = 0;

    std::vector<std::string> chosen_cells() const {
        if (!cells.empty()) return cells;
        return proj_size > 0 ? cells_with_projection() : nn::cell_names();
    }
    nn::FusedCheckOptions options;
    bool per_step = false;
    bool json = false;
};

nlohmann::json differences_json(const std::vector<nn::TensorDifference>& differences) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& d : differences) j[d.tensor] = d.difference;
    return j;
}

nlohmann::json report_json(const std::string& cell, const nn::FusedCheckReport& report) {
    nlohmann::json j{{"cell", cell}, {"passed", report.passed}, {"tolerance", report.tolerance}};
    if (!report.passed)
        j["first_divergence"] = {{"pass", report.pass},     {"direction", report.reverse ? "reverse" : "forward"},
                                 {"step", report.step},     {"tensor", report.tensor},
                                 {"difference", report.difference}};
    for (const auto& direction : report.directions) {
        nlohmann::json steps = nlohmann::json::array();
        for (const auto& step : direction.steps)
            steps.push_back({{"step", step.step}, {"forward", differences_json(step.forward)},
                             {"backward", differences_json(step.backward)}});
        j[direction.reverse ? "reverse" : "forward"] = {{"steps", steps},
                                                        {"gradients", differences_json(direction.gradients)}};
    }
    return j;
}

int run_check_fused(const CheckFusedRequest& request) {
    int failures = 0;
    for (const auto& name : request.chosen_cells()) {
        Generator generator(request.options.seed);
        const auto cell = nn::cell_factory<double>(name, {}, {.bias = request.bias, .proj_size = request.proj_size})(
            {.input_size = request.input_size, .hidden_size = request.hidden_size}, generator);
        const nn::FusedCheckReport report = nn::check_fused_cell(*cell, request.options);
        if (request.json) std::cout << report_json(name, report).dump() << std::endl;
        else std::cout << name << ": " << report.to_string(request.per_step);
        if (!report.passed) {
            ++failures;
            std::cerr << fmt::format("rewind check-fused: {}: the {} diverges at time step {} ({} direction) in {}\n",
                                     name, report.pass, report.step, report.reverse ? "reverse" : "forward", report.tensor);
        }
    }
    return failures == 0 ? 0 : 1;
}

}  // namespace

Command add_check_fused_command(CLI::App& app) {
    auto request = std::make_shared<CheckFusedRequest>();
    CLI::App* command = app.add_subcommand(
        "check-fused", "check the cells' fused rules against the tape's derivative of their step(), step by step (float64)");
    command->add_option("--cell", request->cells, "cells to check (default: every cell of the table)")
        ->delimiter(',')
        ->check(CLI::IsMember(nn::cell_names()));
    command->add_option("--input-size", request->input_size, "features per step (I)")
        ->capture_default_str()
        ->check(integer_in(1, 4096));
    command->add_option("--hidden-size", request->hidden_size, "hidden units (H)")
        ->capture_default_str()
        ->check(integer_in(1, 4096));
    command->add_option("--seq-len", request->options.steps, "time steps (T)")
        ->capture_default_str()
        ->check(integer_in(1, 1000));
    command->add_option("--batch", request->options.batch, "sequences (B)")->capture_default_str()->check(integer_in(1, 1000));
    command->add_flag("!--no-lengths", request->options.with_lengths, "every sequence runs all T steps");
    command->add_option("--seed", request->options.seed, "seed of the parameters and the data")
        ->capture_default_str()
        ->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
    command->add_option("--tolerance", request->options.tolerance, "relative to max(1, largest |value|) per tensor")
        ->capture_default_str()
        ->check(finite_number(0, Bound::at_least));
    add_bias_and_projection_options(*command, request->bias, request->proj_size);
    command->callback([request] {
        for (const auto& name : request->chosen_cells()) check_projection(name, request->hidden_size, request->proj_size);
    });
    command->add_flag("--per-step", request->per_step, "print every time step's differences");
    command->add_flag("--json", request->json, "one JSON object per cell");
    return {command, [request] { return run_check_fused(*request); }};
}

}  // namespace rw::cli
