#pragma once
// `rewind gradcheck`'s request and how its results are shown: a table or one JSON object.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <rewind/autograd/gradcheck.hpp>
#include <rewind/nn/layers/layer_check.hpp>

#include "commands.hpp"

namespace rw::cli {

struct GradcheckRequest {
    LayerConfig layer;
    std::size_t seq_len = 0;
    std::size_t batch = 0;
    std::vector<std::int64_t> lengths;  // empty: every sequence runs all steps
    std::string path = "generic";
    std::uint64_t seed = 0;
    bool json = false;
    bool initial_state = true;  // random h0 (and c0) checked too
    GradcheckOptions tolerance;  // step and tolerances; the seed is set from `seed`
    bool per_step = false;       // also dL/dx_t and dL/dh_t step by step (nn::gradcheck_layer_per_step)
    std::optional<std::size_t> plant_error;  // --plant-error: the step whose backward is made wrong
    bool second_order = false;  // --second-order: also second derivatives (gradgradcheck), per step with --per-step
    bool jvp = false;           // --jvp: also forward mode (J v, the adjoint identity) and H v
    int threads = 1;
};

struct PathReport {
    nn::ExecutionPath path;
    GradcheckReport report;
    std::optional<nn::PerStepReport> per_step;  // with --per-step
    std::string path_note;  // the layer's path_note(): why the fused path ran step() (e.g. proj_size)
    std::optional<GradcheckReport> second_order;          // with --second-order
    std::optional<nn::PerStepReport> second_order_per_step;  // with --second-order --per-step
    std::optional<JvpReport> jvp;                           // with --jvp
    std::optional<GradcheckReport> hvp;                     // with --jvp: H v against differences of gradients
};

// With --path both: how closely the two paths' analytic gradients agree.
struct PathAgreement {
    double max_rel_difference = 0;
    std::string worst_tensor;
};

std::string report_text(const GradcheckRequest& request, const std::vector<PathReport>& reports,
                        const std::optional<PathAgreement>& agreement);
nlohmann::json report_json(const GradcheckRequest& request, const std::vector<PathReport>& reports,
                           const std::optional<PathAgreement>& agreement);
// "x, weight_hh_l0 (generic path) disagree ..." or empty when every check passed.
std::string failure_summary(const std::vector<PathReport>& reports);

}  // namespace rw::cli
