// rewind flow: how the gradient travels back in time through a layer, at initialisation or with
// trained weights from a state dict (nn::gradient_flow): ||dL/dh_t||, sigma_max(dh_T/dh_t), gate
// saturation and the per-step decay factor, as a table, JSON, CSV and a log-scale plot.

#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <rewind/nn/analysis/curves.hpp>
#include <rewind/nn/analysis/gradient_flow.hpp>
#include <rewind/nn/io/safetensors.hpp>
#include <rewind/nn/io/state_dict.hpp>

#include "commands.hpp"

namespace rw::cli {

namespace {

using json = nlohmann::json;

struct FlowRequest {
    LayerConfig layer;
    std::size_t seq_len = 0;
    std::size_t batch = 4;
    std::string state_file, prefix;
    bool prefix_given = false;
    std::uint64_t seed = 0;
    bool json = false;
    std::string csv, png;
    std::string loss = "last";
    double input_scale = 1.0;
    double forget_bias = 0.0;
    nn::FlowOptions flow;
    int threads = 1;
};

// Where the layer's parameters sit in a state dict: under no prefix (a layer saved alone) or
// under a module path such as "lstm." or, in a checkpoint, "model.lstm.".
std::string find_prefix(const nn::TensorMap& tensors, const std::string& file) {
    const std::string anchor = "weight_ih_l0";
    std::set<std::string> prefixes;
    for (const auto& [key, value] : tensors)
        if (key.size() >= anchor.size() && key.compare(key.size() - anchor.size(), anchor.size(), anchor) == 0)
            prefixes.insert(key.substr(0, key.size() - anchor.size()));
    if (prefixes.empty()) throw CommandError(fmt::format("--state: '{}' holds no recurrent layer (no key ending in '{}')", file, anchor));
    if (prefixes.size() > 1)
        throw CommandError(fmt::format("--state: '{}' holds {} recurrent layers (prefixes '{}'); choose one with --prefix",
                                       file, prefixes.size(), fmt::join(prefixes, "', '")));
    return *prefixes.begin();
}

// Loads exactly the layer's parameters from the file (other entries, such as a checkpoint's
// optimizer state or other modules, are left alone); shapes are checked by load_state_dict.
std::string load_layer_state(nn::Recurrent<double>& layer, FlowRequest& request) {
    const nn::TensorMap tensors = nn::load_safetensors(request.state_file);
    const std::string prefix = request.prefix_given ? request.prefix : find_prefix(tensors, request.state_file);
    nn::TensorMap own;
    for (const auto& [name, parameter] : layer.named_parameters()) {
        auto found = tensors.find(prefix + name);
        if (found == tensors.end())
            throw CommandError(fmt::format("--state: '{}' has no '{}' (a {} layer of {} layer(s) needs it)",
                                           request.state_file, prefix + name, request.layer.cell, request.layer.layers));
        own.emplace(name, found->second);
    }
    nn::load_state_dict(layer, own, fmt::format("{} (prefix '{}')", request.state_file, prefix));
    return prefix;
}

double ratio(const std::vector<double>& norm, std::size_t t) {
    return t + 1 < norm.size() && norm[t + 1] > 0 ? norm[t] / norm[t + 1] : NAN;
}

json number(double value) { return std::isfinite(value) ? json(value) : json(nullptr); }

json numbers(const std::vector<double>& values) {
    json result = json::array();
    for (double v : values) result.push_back(number(v));
    return result;
}

std::string verdict(double decay) {
    if (!std::isfinite(decay)) return "no finite, positive norms to fit";
    if (decay < 0.95) return "vanishing going back in time";
    if (decay > 1.05) return "exploding going back in time";
    return "near constant going back in time";
}

nn::Curve curve_of(const nn::FlowReport& report) {
    nn::Curve curve;
    curve.columns.push_back("t");
    for (std::size_t l = 0; l < report.layers.size(); ++l) curve.columns.push_back(fmt::format("grad_norm_l{}", l));
    curve.columns.push_back("sigma_max");
    curve.columns.push_back("ratio");
    for (std::size_t l = 0; l < report.layers.size(); ++l)
        for (const auto& gate : report.layers[l].gates) curve.columns.push_back(fmt::format("saturated_{}_l{}", gate.gate, l));
    for (std::size_t t = 0; t < report.steps; ++t) {
        std::vector<double> row{double(t)};
        for (const auto& layer : report.layers) row.push_back(layer.grad_norm[t]);
        row.push_back(report.singular_value[t]);
        row.push_back(ratio(report.top().grad_norm, t));
        for (const auto& layer : report.layers)
            for (const auto& gate : layer.gates) row.push_back(gate.per_step[t]);
        curve.add(std::move(row));
    }
    return curve;
}

std::string describe(const FlowRequest& request, const std::string& prefix) {
    const LayerConfig& config = request.layer;
    std::string text = fmt::format("gradient flow of {} ({} layer{}, input {}, hidden {}{}), T={}, B={}, seed {}",
                                   config.cell, config.layers, config.layers == 1 ? "" : "s", config.input_size,
                                   config.hidden_size, config.structure_note(), request.seq_len, request.batch,
                                   request.seed);
    if (!request.state_file.empty()) text += fmt::format(", weights from {} (prefix '{}')", request.state_file, prefix);
    else if (request.forget_bias != 0) text += fmt::format(", forget bias {:g}", request.forget_bias);
    return text;
}

std::string report_text(const FlowRequest& request, const std::string& prefix, const nn::FlowReport& report) {
    std::string text = describe(request, prefix) + "\n";
    text += report.loss == nn::FlowLoss::last_step ? "loss L = <v, h_T> (the last step only), v random\n"
                                                   : "loss L = sum_t <v_t, h_t> (every step), v_t random\n";
    for (std::size_t l = 0; l < report.layers.size(); ++l)
        text += fmt::format("sigma_max(W_hh) of layer {}: {:.4f}\n", l, report.layers[l].weight_hh_sigma_max);
    const auto& gates = report.top().gates;
    text += fmt::format("\n{:>6} {:>13} {:>9} {:>13}", "t", "||dL/dh_t||", "ratio", "sigma_max");
    for (const auto& gate : gates) text += fmt::format(" {:>8}", gate.gate);
    text += fmt::format("\n{:>6} {:>13} {:>9} {:>13}", "", "(top layer)", "t / t+1", "(dh_T/dh_t)");
    if (!gates.empty()) text += fmt::format(" {:>8}", "saturated");
    text += "\n";
    // Every step is in --csv and --json; the table shows the steps where sigma was computed, or
    // about 20 evenly spaced ones.
    bool any_sigma = false;
    for (double sigma : report.singular_value) any_sigma = any_sigma || !std::isnan(sigma);
    const std::size_t every = std::max<std::size_t>(1, report.steps / 20);
    auto optional = [](double value, const char* format) {
        return std::isfinite(value) ? fmt::format(fmt::runtime(format), value) : std::string("-");
    };
    for (std::size_t back = 0; back < report.steps; ++back) {
        const std::size_t t = report.steps - 1 - back;
        if (any_sigma ? std::isnan(report.singular_value[t]) : back % every != 0 && t != 0) continue;
        text += fmt::format("{:>6} {:>13.4e} {:>9} {:>13}", t, report.top().grad_norm[t],
                            optional(ratio(report.top().grad_norm, t), "{:.4f}"),
                            optional(report.singular_value[t], "{:.4e}"));
        for (const auto& gate : gates) text += fmt::format(" {:>7.1f}%", 100 * gate.per_step[t]);
        text += "\n";
    }
    text += fmt::format("\nper-step decay factor ||dL/dh_(t-1)|| / ||dL/dh_t|| (least-squares fit): {:.4f}, {}\n",
                        report.decay_per_step, verdict(report.decay_per_step));
    for (std::size_t l = 0; l + 1 < report.layers.size(); ++l)
        text += fmt::format("  layer {}: {:.4f}\n", l, nn::fitted_decay_per_step(report.layers[l].grad_norm));
    for (std::size_t l = 0; l < report.layers.size(); ++l) {
        if (report.layers[l].gates.empty()) continue;
        text += fmt::format("gates saturated (within {:g} of 0 or 1; tanh gates of -1 or 1), layer {}:", request.flow.saturation_margin, l);
        for (const auto& gate : report.layers[l].gates) text += fmt::format(" {} {:.1f}%", gate.gate, 100 * gate.overall);
        text += "\n";
    }
    text += fmt::format("parameter gradient norm: {:.4e}\n", report.parameter_grad_norm);
    return text;
}

json report_json(const FlowRequest& request, const std::string& prefix, const nn::FlowReport& report) {
    const LayerConfig& config = request.layer;
    json result{{"config",
                 {{"cell", config.cell},
                  {"input_size", config.input_size},
                  {"hidden_size", config.hidden_size},
                  {"layers", config.layers},
                  {"bias", config.bias},
                  {"proj_size", config.proj_size},
                  {"seq_len", request.seq_len},
                  {"batch", request.batch},
                  {"seed", request.seed},
                  {"loss", request.loss},
                  {"state", request.state_file},
                  {"prefix", prefix}}},
                {"decay_per_step", number(report.decay_per_step)},
                {"singular_value", numbers(report.singular_value)},
                {"parameter_grad_norm", number(report.parameter_grad_norm)},
                {"layers", json::array()}};
    for (const auto& layer : report.layers) {
        json entry{{"grad_norm", numbers(layer.grad_norm)},
                   {"decay_per_step", number(nn::fitted_decay_per_step(layer.grad_norm))},
                   {"weight_hh_sigma_max", number(layer.weight_hh_sigma_max)},
                   {"gates", json::object()}};
        for (const auto& gate : layer.gates)
            entry["gates"][gate.gate] = {{"overall", gate.overall}, {"per_step", numbers(gate.per_step)}};
        result["layers"].push_back(std::move(entry));
    }
    return result;
}

void save_curves(const FlowRequest& request, const nn::FlowReport& report) {
    std::string csv = request.csv;
    if (csv.empty() && !request.png.empty()) csv = request.png.substr(0, request.png.rfind('.')) + ".csv";
    if (csv.empty()) return;
    const nn::Curve curve = curve_of(report);
    nn::write_csv(csv, curve);
    if (!request.json) fmt::print("per-step figures written to {}\n", csv);
    if (request.png.empty()) return;
    // Columns 2.. are the layers' norms and then sigma_max: log scale against time.
    nn::plot_png(request.png, csv, report.layers.size() + 2,
                 {.title = fmt::format("{}: gradient reaching each step (T={})", request.layer.cell, report.steps),
                  .x_label = "time step t",
                  .y_label = "||dL/dh_t||, sigma_max(dh_T/dh_t)",
                  .log_y = true});
    if (!request.json) fmt::print("plot written to {}\n", request.png);
}

int run_flow(FlowRequest& request) {
    apply_threads(request.threads);
    const LayerConfig& config = request.layer;
    const auto& gates = nn::cell_info(config.cell).gate_names;  // the table of cells says which have one
    if (request.forget_bias != 0 && std::find(gates.begin(), gates.end(), "forget") == gates.end())
        throw CommandError("--forget-bias applies to --cell lstm only (the cells with a forget gate)");
    if (request.forget_bias != 0 && !request.state_file.empty())
        throw CommandError("--forget-bias sets the initial weights; with --state the file's weights are analysed");
    nn::RecurrentOptions options = config.recurrent_options();
    options.seed = request.seed;
    options.init.forget_bias = request.forget_bias;
    auto layer = nn::make_recurrent<double>(config.cell, options);
    const std::string prefix = request.state_file.empty() ? std::string() : load_layer_state(*layer, request);

    Generator generator(request.seed ^ 0x9e3779b97f4a7c15ULL);
    xt::xarray<double> input = checked_array<double>("flow input", {request.seq_len, request.batch, config.input_size});
    for (double& v : input) v = generator.uniform(-request.input_scale, request.input_scale);
    request.flow.seed = request.seed;
    request.flow.loss = request.loss == "every" ? nn::FlowLoss::every_step : nn::FlowLoss::last_step;
    const nn::FlowReport report = nn::gradient_flow(*layer, Tensor<double>(std::move(input)), request.flow);

    save_curves(request, report);
    if (request.json)
        std::cout << report_json(request, prefix, report).dump(2) << std::endl;
    else
        std::cout << report_text(request, prefix, report);
    return 0;
}

}  // namespace

Command add_flow_command(CLI::App& app) {
    auto request = std::make_shared<FlowRequest>();
    CLI::App* command = app.add_subcommand(
        "flow", "how the gradient travels back in time: ||dL/dh_t||, sigma_max(dh_T/dh_t), gate saturation");
    add_layer_options(*command, request->layer);
    command->remove_option(command->get_option("--bidirectional"));  // the flow follows one direction
    add_structure_options(*command, request->layer);
    command->add_option("--seq-len", request->seq_len, "time steps (T)")->required()->check(integer_in(1, max_size));
    command->add_option("--batch", request->batch, "sequences (B)")->capture_default_str()->check(integer_in(1, max_size));
    command->add_option("--state", request->state_file,
                        "analyse these weights: a safetensors state dict or checkpoint holding the layer's parameters");
    command->add_option("--prefix", request->prefix,
                        "the layer's key prefix in --state, e.g. 'model.lstm.' (default: found from the keys)")
        ->each([request](const std::string&) { request->prefix_given = true; });
    command->add_option("--seed", request->seed, "seed of the initial weights, the input and the loss direction")
        ->capture_default_str()
        ->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
    command->add_option("--loss", request->loss, "last: L = <v, h_T>; every: L = sum_t <v_t, h_t>")
        ->capture_default_str()
        ->check(CLI::IsMember({"last", "every"}));
    command->add_option("--input-scale", request->input_scale, "inputs drawn from U(-s, s)")
        ->capture_default_str()
        ->check(finite_number(0, Bound::at_least));
    command->add_option("--forget-bias", request->forget_bias, "LSTM: added to the forget-gate bias at initialisation")
        ->capture_default_str()
        ->check(finite_number());
    command->add_option("--sigma-steps", request->flow.singular_value_steps,
                        "steps at which sigma_max(dh_T/dh_t) is computed (0: none)")
        ->capture_default_str()
        ->check(integer_in(0, max_size));
    command->add_option("--power-iterations", request->flow.power_iterations, "power iterations per sigma_max")
        ->capture_default_str()
        ->check(integer_in(1, max_rounds));
    command->add_flag("--json", request->json, "print one JSON object instead of the table");
    command->add_option("--csv", request->csv, "write every step's figures to this CSV file");
    command->add_option("--plot", request->png, "draw log ||dL/dh_t|| and sigma_max against t into this PNG (gnuplot)");
    add_threads_option(*command, request->threads);
    return {command, [request] { return run_flow(*request); }};
}

}  // namespace rw::cli
