// rewind gradcheck: checks a layer's backpropagation through time against central differences,
// in float64, for every parameter, the input and (optionally) the initial states.

#include <iostream>
#include <memory>

#include <fmt/format.h>

#include <rewind/autograd/gradcheck.hpp>
#include <rewind/autograd/ops.hpp>

#include "gradcheck_report.hpp"

namespace rw::cli {

namespace {

// A stream for the data distinct from the layer's initialisation, which uses the seed as is.
constexpr std::uint64_t data_stream = 0x9e3779b97f4a7c15ULL;

void check_request(const GradcheckRequest& request) {
    if (request.lengths.empty()) return;
    if (request.lengths.size() != request.batch)
        throw CommandError(fmt::format("--lengths gives {} lengths for --batch {}", request.lengths.size(), request.batch));
    for (std::size_t b = 0; b < request.lengths.size(); ++b)
        if (request.lengths[b] < 1 || request.lengths[b] > std::int64_t(request.seq_len))
            throw CommandError(fmt::format("--lengths: length {} of sequence {} is outside 1..{} (--seq-len)",
                                           request.lengths[b], b, request.seq_len));
}

std::shared_ptr<nn::Recurrent<double>> make_layer(const GradcheckRequest& request, nn::ExecutionPath path) {
    const LayerConfig& config = request.layer;
    auto layer = nn::make_recurrent<double>(config.cell, {.input_size = config.input_size,
                                                          .hidden_size = config.hidden_size,
                                                          .num_layers = config.layers,
                                                          .bidirectional = config.bidirectional,
                                                          .seed = request.seed});
    choose_path(*layer, path);
    return layer;
}

GradcheckReport check_layer(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    // Every input is a leaf. The parameters are the layer's own handles, so the values that
    // gradcheck perturbs in place are the ones forward() reads.
    std::vector<Tensor<double>> inputs;
    std::vector<std::string> names;
    for (const auto& [name, parameter] : layer.named_parameters()) {
        inputs.push_back(parameter);
        names.push_back(name);
    }
    Generator generator(request.seed ^ data_stream);
    auto random = [&](const std::string& name, const Shape& shape, double scale) {
        xt::xarray<double> value = xt::xarray<double>::from_shape(shape);
        for (double& v : value) v = generator.normal(0.0, scale);
        inputs.emplace_back(std::move(value), /*requires_grad=*/true);
        names.push_back(name);
    };
    const LayerConfig& config = request.layer;
    const std::size_t first_data = inputs.size();
    random("x", {request.seq_len, request.batch, config.input_size}, 1.0);
    if (request.initial_state)
        for (const auto& state : layer.state_names())
            random(state + "0", {config.layers * config.directions(), request.batch, config.hidden_size}, 0.5);

    std::optional<std::vector<std::int64_t>> lengths;
    if (!request.lengths.empty()) lengths = request.lengths;
    // The checked output covers output and every final state, so gradients flowing only into
    // h_n or c_n (e.g. past a short sequence's end in the reverse direction) are checked too.
    auto function = [&layer, first_data, &lengths](const std::vector<Tensor<double>>& in) {
        const std::vector<Tensor<double>> initial(in.begin() + std::ptrdiff_t(first_data) + 1, in.end());
        const auto result = layer.forward(in[first_data], initial, lengths);
        std::vector<Tensor<double>> parts{reshape(result.output, {result.output.size()})};
        for (const auto& state : result.state) parts.push_back(reshape(state, {state.size()}));
        return concat(parts, 0);
    };
    GradcheckOptions options = request.tolerance;
    options.seed = request.seed;
    return gradcheck(function, std::move(inputs), options, std::move(names));
}

int run_gradcheck(const GradcheckRequest& request) {
    apply_threads(request.threads);
    check_request(request);
    // All layers first, so an unavailable path is refused before any (slow) checking.
    std::vector<std::pair<nn::ExecutionPath, std::shared_ptr<nn::Recurrent<double>>>> layers;
    for (const auto path : paths_of(request.path)) layers.emplace_back(path, make_layer(request, path));

    std::vector<PathReport> reports;
    for (const auto& [path, layer] : layers) reports.push_back({path, check_layer(request, *layer)});
    if (request.json)
        std::cout << report_json(request, reports).dump(2) << std::endl;
    else
        std::cout << report_text(request, reports);
    const std::string failures = failure_summary(reports);
    if (failures.empty()) return 0;
    std::cerr << "rewind gradcheck: " << failures << std::endl;
    return 1;
}

}  // namespace

Command add_gradcheck_command(CLI::App& app) {
    auto request = std::make_shared<GradcheckRequest>();
    CLI::App* command = app.add_subcommand("gradcheck", "check a layer's BPTT gradients numerically (float64)");
    add_layer_options(*command, request->layer);
    command->add_option("--seq-len", request->seq_len, "time steps (T)")->required()->check(CLI::PositiveNumber);
    command->add_option("--batch", request->batch, "sequences (B)")->required()->check(CLI::PositiveNumber);
    command->add_option("--lengths", request->lengths, "length of each sequence, e.g. 5,3,4 (default: all T)")
        ->delimiter(',');
    add_path_option(*command, request->path, /*allow_both=*/true);
    command->add_option("--seed", request->seed, "seed of the parameters, the data and the projection")
        ->capture_default_str();
    command->add_flag("--json", request->json, "print one JSON object instead of the table");
    command->add_flag("!--zero-initial-state", request->initial_state,
                      "start from zeros instead of random initial states h0 (and c0), which are then not checked");
    command->add_option("--eps", request->tolerance.step, "central-difference step")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    command->add_option("--atol", request->tolerance.absolute_tolerance, "absolute tolerance")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    command->add_option("--rtol", request->tolerance.relative_tolerance, "relative tolerance (of |numeric|)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    add_threads_option(*command, request->threads);
    return {command, [request] { return run_gradcheck(*request); }};
}

}  // namespace rw::cli
