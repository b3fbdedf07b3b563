// rewind gradcheck: checks a layer's backpropagation through time against central differences,
// in float64, for every parameter, the input and (optionally) the initial states.

#include <iostream>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <xtensor/xmath.hpp>
#include <xtensor/xsort.hpp>

#include <rewind/autograd/engine.hpp>
#include <rewind/autograd/gradcheck.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/nn/layers/layer_check.hpp>

#include "gradcheck_report.hpp"
#include "planted_error.hpp"

namespace rw::cli {

namespace {

// A stream for the data distinct from the layer's initialisation, which uses the seed as is.
constexpr std::uint64_t data_stream = 0x9e3779b97f4a7c15ULL;

void check_request(const GradcheckRequest& request) {
    if (request.plant_error && *request.plant_error >= request.seq_len)
        throw CommandError(fmt::format("--plant-error: step {} is outside 0..{} (--seq-len)", *request.plant_error,
                                       request.seq_len - 1));
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
    nn::RecurrentOptions options = config.recurrent_options();
    options.seed = request.seed;
    const PlantedError kind = request.second_order ? PlantedError::second_order
                              : request.jvp        ? PlantedError::jvp
                                                   : PlantedError::backward;
    auto layer = request.plant_error ? make_layer_with_planted_error(config.cell, options, *request.plant_error, kind)
                                     : nn::make_recurrent<double>(config.cell, options);
    choose_path(*layer, path);
    return layer;
}

// The random data of a check: x, and random initial states unless --zero-initial-state.
struct CheckData {
    Tensor<double> x;
    std::vector<Tensor<double>> initial;
    std::optional<std::vector<std::int64_t>> lengths;
};

CheckData check_data(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    Generator generator(request.seed ^ data_stream);
    auto random = [&](const Shape& shape, double scale) {
        xt::xarray<double> value = checked_array<double>("gradcheck input", shape);
        for (double& v : value) v = generator.normal(0.0, scale);
        return Tensor<double>(std::move(value), /*requires_grad=*/true);
    };
    const LayerConfig& config = request.layer;
    const Tensor<double> x = random({request.seq_len, request.batch, config.input_size}, 1.0);
    std::vector<Tensor<double>> initial;
    if (request.initial_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s)
            initial.push_back(random({config.layers * config.directions(), request.batch, layer.state_size(s)}, 0.5));
    std::optional<std::vector<std::int64_t>> lengths;
    if (!request.lengths.empty()) lengths = request.lengths;
    return {x, std::move(initial), std::move(lengths)};
}

nn::LayerCheck checked_function(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    const CheckData data = check_data(request, layer);
    return nn::layer_check(layer, data.x, data.initial, data.lengths);
}

GradcheckOptions check_options(const GradcheckRequest& request) {
    GradcheckOptions options = request.tolerance;
    options.seed = request.seed;
    return options;
}

GradcheckReport check_layer(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    nn::LayerCheck checked = checked_function(request, layer);
    return gradcheck(checked.function, std::move(checked.inputs), check_options(request), std::move(checked.names));
}

// --per-step: dL/dx_t and dL/dh_t step by step, on the same data.
nn::PerStepReport check_steps(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    const CheckData data = check_data(request, layer);
    return nn::gradcheck_layer_per_step(layer, data.x, data.initial, data.lengths, check_options(request));
}

// --second-order: the same checks of the second derivatives, on the same data.
GradcheckReport check_second_order(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    nn::LayerCheck checked = checked_function(request, layer);
    return gradgradcheck(checked.function, std::move(checked.inputs), check_options(request), std::move(checked.names));
}

// --jvp: forward mode and H v, on the same data.
JvpReport check_jvp(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    const CheckData data = check_data(request, layer);
    return nn::jvpcheck_layer(layer, data.x, data.initial, data.lengths, check_options(request));
}

GradcheckReport check_hvp(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    const CheckData data = check_data(request, layer);
    return nn::hvpcheck_layer(layer, data.x, data.initial, data.lengths, check_options(request));
}

nn::PerStepReport check_second_order_steps(const GradcheckRequest& request, nn::Recurrent<double>& layer) {
    const CheckData data = check_data(request, layer);
    return nn::gradgradcheck_layer_per_step(layer, data.x, data.initial, data.lengths, check_options(request));
}

// The analytic gradients of one random projection of the checked function.
std::vector<std::pair<std::string, xt::xarray<double>>> analytic_gradients(const GradcheckRequest& request,
                                                                           nn::Recurrent<double>& layer) {
    nn::LayerCheck checked = checked_function(request, layer);
    const Tensor<double> output = checked.function(checked.inputs);
    Generator generator(request.seed + 1);
    xt::xarray<double> projection = xt::xarray<double>::from_shape(output.shape());
    for (double& v : projection) v = generator.normal(0.0, 1.0);
    const auto gradients = grad<double>({sum(output * Tensor<double>(std::move(projection)))}, checked.inputs);
    std::vector<std::pair<std::string, xt::xarray<double>>> named;
    for (std::size_t i = 0; i < gradients.size(); ++i) named.emplace_back(checked.names[i], gradients[i].value());
    return named;
}

// How far the fused path's analytic gradients are from the generic path's, per tensor relative
// to its largest element (elementwise relative differences of near-zero elements are noise):
// max_k |fused_k - generic_k| / max_k max(|fused_k|, |generic_k|), the worst over all tensors.
PathAgreement compare_paths(const GradcheckRequest& request, nn::Recurrent<double>& generic,
                            nn::Recurrent<double>& fused) {
    const auto a = analytic_gradients(request, generic), b = analytic_gradients(request, fused);
    PathAgreement agreement;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double scale = std::max(xt::amax(xt::abs(a[i].second))(), xt::amax(xt::abs(b[i].second))());
        const double difference = scale == 0 ? 0 : xt::amax(xt::abs(a[i].second - b[i].second))() / scale;
        if (agreement.worst_tensor.empty() || difference > agreement.max_rel_difference) {
            agreement.max_rel_difference = difference;
            agreement.worst_tensor = a[i].first;
        }
    }
    return agreement;
}

int run_gradcheck(const GradcheckRequest& request) {
    apply_threads(request.threads);
    check_request(request);
    // All layers first, so an unavailable path is refused before any (slow) checking.
    std::vector<std::pair<nn::ExecutionPath, std::shared_ptr<nn::Recurrent<double>>>> layers;
    for (const auto path : paths_of(request.path)) layers.emplace_back(path, make_layer(request, path));

    std::vector<PathReport> reports;
    for (const auto& [path, layer] : layers) {
        PathReport& report = reports.emplace_back();
        report.path = path;
        report.report = check_layer(request, *layer);
        report.path_note = layer->path_note();
        if (request.per_step) report.per_step = check_steps(request, *layer);
        if (request.second_order) {
            report.second_order = check_second_order(request, *layer);
            if (request.per_step) report.second_order_per_step = check_second_order_steps(request, *layer);
        }
        if (request.jvp) {
            report.jvp = check_jvp(request, *layer);
            report.hvp = check_hvp(request, *layer);
        }
    }
    std::optional<PathAgreement> agreement;
    if (layers.size() == 2) agreement = compare_paths(request, *layers[0].second, *layers[1].second);
    if (request.json)
        std::cout << report_json(request, reports, agreement).dump(2) << std::endl;
    else
        std::cout << report_text(request, reports, agreement);
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
    add_structure_options(*command, request->layer);
    command->add_option("--seq-len", request->seq_len, "time steps (T)")->required()->check(integer_in(1, max_size));
    command->add_option("--batch", request->batch, "sequences (B)")->required()->check(integer_in(1, max_size));
    command->add_option("--lengths", request->lengths, "length of each sequence, e.g. 5,3,4 (default: all T)")
        ->delimiter(',');
    add_path_option(*command, request->path, /*allow_both=*/true);
    command->add_option("--seed", request->seed, "seed of the parameters, the data and the projection")
        ->capture_default_str()
        ->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
    command->add_flag("--json", request->json, "print one JSON object instead of the table");
    command->add_flag("--per-step", request->per_step,
                      "also check dL/dx_t and dL/dh_t for every time step and name the first step, walking back "
                      "from T, where analytic and numeric disagree");
    auto* second_order = command->add_flag(
        "--second-order", request->second_order,
        "also check second derivatives: G = <dL/d(inputs), v> built with create_graph, dG/d(inputs) against central "
        "differences of dL/d(inputs) (per step too with --per-step)");
    command
        ->add_flag("--jvp", request->jvp,
                   "also check forward mode: J v (rw::jvp) against central differences for a tangent on each tensor, "
                   "the adjoint identity <J v, u> = <v, J^T u> with rw::vjp (relative 1e-12), and H v (rw::hvp) "
                   "against central differences of gradients")
        ->excludes(second_order);
    command->add_option("--plant-error", request->plant_error,
                        "check the check: make the backward of this step wrong by 1% in layer 0's forward direction "
                        "(a wrapped cell, run step by step); --per-step should name this step. With --second-order "
                        "the backward stays right and its derivative is made wrong instead; with --jvp the "
                        "forward-mode rule is made wrong instead");
    command->add_flag("!--zero-initial-state", request->initial_state,
                      "start from zeros instead of random initial states h0 (and c0), which are then not checked");
    command->add_option("--eps", request->tolerance.step, "central-difference step")
        ->capture_default_str()
        ->check(finite_number(0, Bound::above));
    command->add_option("--atol", request->tolerance.absolute_tolerance, "absolute tolerance")
        ->capture_default_str()
        ->check(finite_number(0, Bound::at_least));
    command->add_option("--rtol", request->tolerance.relative_tolerance, "relative tolerance (of |numeric|)")
        ->capture_default_str()
        ->check(finite_number(0, Bound::at_least));
    add_threads_option(*command, request->threads);
    return {command, [request] { return run_gradcheck(*request); }};
}

}  // namespace rw::cli
