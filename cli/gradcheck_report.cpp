#include "gradcheck_report.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace rw::cli {

namespace {

using json = nlohmann::json;

// Where the worst element sits, in words, for the tensors whose first index means something:
// x is time-major, and h0/c0 are stacked by layer, then direction.
std::string location(const GradcheckRequest& request, const InputCheck& check) {
    if (check.worst_index.empty()) return {};
    const std::size_t first = check.worst_index.front();
    if (check.name == "x" || check.name == "output") return fmt::format("time step {}", first);
    if (check.name == "h0" || check.name == "c0" || check.name == "h_n" || check.name == "c_n") {
        const std::size_t directions = request.layer.directions();
        return fmt::format("layer {}, {} direction", first / directions, first % directions == 0 ? "forward" : "reverse");
    }
    return {};
}

json input_check_json(const InputCheck& check) {
    return {{"name", check.name},
            {"shape", check.shape},
            {"max_abs_error", check.max_abs_error},
            {"max_rel_error", check.max_rel_error},
            {"worst_index", check.worst_index},
            {"worst_analytic", check.worst_analytic},
            {"worst_numeric", check.worst_numeric},
            {"failed_elements", check.failed_elements},
            {"passed", check.passed}};
}

json per_step_json(nn::ExecutionPath path, const nn::PerStepReport& report) {
    json steps = json::array();
    for (const nn::StepCheck& step : report.steps) {
        json hidden = json::array();
        for (const InputCheck& h : step.hidden) hidden.push_back(input_check_json(h));
        steps.push_back({{"step", step.step}, {"passed", step.passed()}, {"x", input_check_json(step.x)}, {"hidden", hidden}});
    }
    json first = nullptr;
    if (report.first_disagreeing_step) first = *report.first_disagreeing_step;
    return {{"path", path_name(path)},
            {"passed", report.passed},
            {"hidden_checked", !report.steps.empty() && !report.steps.front().hidden.empty()},
            {"first_disagreeing_step", first},
            {"max_abs_error", report.max_abs_error},
            {"max_rel_error", report.max_rel_error},
            {"steps", steps}};
}

std::string describe(const GradcheckRequest& request) {
    const LayerConfig& config = request.layer;
    std::string text = fmt::format("{} ({} layer{}{}, input {}, hidden {}{}), T={}, B={}", config.cell, config.layers,
                                   config.layers == 1 ? "" : "s", config.bidirectional ? ", bidirectional" : "",
                                   config.input_size, config.hidden_size, config.structure_note(), request.seq_len,
                                   request.batch);
    if (!request.lengths.empty()) text += fmt::format(", lengths {}", fmt::join(request.lengths, ","));
    return text + fmt::format(", seed {}", request.seed);
}

// One row per checked tensor, and the verdict.
std::string tensor_table(const GradcheckRequest& request, const GradcheckReport& report) {
    const GradcheckOptions& tolerance = request.tolerance;
    std::string text = fmt::format("  {:<20} {:<12} {:>11} {:>11}  {}\n", "tensor", "shape", "max abs err", "max rel err",
                                   "worst element");
    for (const InputCheck& check : report.inputs) {
        const std::string where = location(request, check);
        text += fmt::format("  {:<20} {:<12} {:>11.3e} {:>11.3e}  [{}]{}{}\n", check.name, shape_string(check.shape),
                            check.max_abs_error, check.max_rel_error, fmt::join(check.worst_index, ", "),
                            where.empty() ? "" : " (" + where + ")",
                            check.passed ? "" : fmt::format("  FAILED ({} elements)", check.failed_elements));
    }
    text += fmt::format(
        "{}: max abs error {:.3e}, max rel error {:.3e} (an element passes when |analytic - numeric| <= {:g} + "
        "{:g} |numeric|)\n",
        report.passed ? "passed" : "FAILED", report.max_abs_error, report.max_rel_error, tolerance.absolute_tolerance,
        tolerance.relative_tolerance);
    return text;
}

// One row per tangent (the tensor carrying it) and output.
std::string jvp_text(const GradcheckRequest& request, const JvpReport& report) {
    std::string text = fmt::format("  {:<20} {:<8} {:>11} {:>11}  {:<26} {:>11}\n", "tangent on", "output", "max abs err",
                                   "max rel err", "worst element", "adjoint err");
    for (const TangentCheck& tangent : report.tangents)
        for (std::size_t o = 0; o < tangent.outputs.size(); ++o) {
            const InputCheck& check = tangent.outputs[o];
            const AdjointCheck& adjoint = tangent.adjoint[o];
            const std::string where = location(request, check);
            std::vector<std::string> failed;
            if (!check.passed)
                failed.push_back(check.first_failed_row && check.name == "output"
                                     ? fmt::format("J v FAILED from time step {}", *check.first_failed_row)
                                     : fmt::format("J v FAILED ({} elements)", check.failed_elements));
            if (!adjoint.passed) failed.push_back("adjoint FAILED");
            text += fmt::format("  {:<20} {:<8} {:>11.3e} {:>11.3e}  {:<26} {:>11.3e}{}\n", o == 0 ? tangent.input : "",
                                check.name, check.max_abs_error, check.max_rel_error,
                                fmt::format("[{}]{}", fmt::join(check.worst_index, ", "), where.empty() ? "" : " (" + where + ")"),
                                adjoint.rel_error, failed.empty() ? "" : fmt::format("  {}", fmt::join(failed, ", ")));
        }
    text += fmt::format("{}: J v max abs error {:.3e}, max rel error {:.3e} (|analytic - numeric| <= {:g} + {:g} |numeric|); "
                        "adjoint identity max rel error {:.3e} (<= {:g})\n",
                        report.passed ? "passed" : "FAILED", report.max_abs_error, report.max_rel_error,
                        report.options.absolute_tolerance, report.options.relative_tolerance, report.max_adjoint_error,
                        report.options.adjoint_tolerance);
    return text;
}

std::string per_step_text(const nn::PerStepReport& per_step) {
    std::string text;
    if (per_step.steps.empty() || per_step.steps.front().hidden.empty())
        text += fmt::format("  (d{}/dh_t not checked: the fused kernel runs the whole sequence as one op; --path generic "
                            "checks it)\n", per_step.quantity);
    return text + per_step.to_string();
}

}  // namespace

std::string report_text(const GradcheckRequest& request, const std::vector<PathReport>& reports,
                        const std::optional<PathAgreement>& agreement) {
    std::string text;
    for (const PathReport& r : reports) {
        const std::string path = path_name(r.path);
        text += fmt::format("gradcheck of {}, {} path\n", describe(request), path);
        if (!r.path_note.empty()) text += fmt::format("  note: the fused path ran step(): {}\n", r.path_note);
        text += tensor_table(request, r.report);
        if (r.per_step) {
            text += fmt::format("per step, {} path: dL/dx_t and dL/dh_t (the gradient with respect to step t's hidden "
                                "state) against central differences, walking back from T\n", path);
            text += per_step_text(*r.per_step);
        }
        if (r.second_order) {
            text += fmt::format("second order, {} path: G = <dL/d(every tensor above), v> for a fixed random v, built "
                                "with create_graph; dG/d(tensor) against central differences of dL/d(tensor)\n", path);
            text += tensor_table(request, *r.second_order);
        }
        if (r.second_order_per_step) {
            text += fmt::format("second order per step, {} path: G = <dL/d(x_t, h_t), v>; dG/dx_t and dG/dh_t against "
                                "central differences of the first gradients, walking back from T\n", path);
            text += per_step_text(*r.second_order_per_step);
        }
        if (r.jvp) {
            text += fmt::format("forward mode, {} path: a random tangent v on one tensor at a time; J v (rw::jvp) against "
                                "central differences along v, and <J v, u> = <v, J^T u> (rw::vjp, random u) per output\n",
                                path);
            text += jvp_text(request, *r.jvp);
        }
        if (r.hvp) {
            text += fmt::format("Hessian-vector product, {} path: H v (rw::hvp_leaves, forward-over-reverse) of L = "
                                "<outputs, r> against central differences of dL/d(tensor) along a random v\n", path);
            text += tensor_table(request, *r.hvp);
        }
    }
    if (agreement)
        text += fmt::format("fused vs generic analytic gradients: max relative difference {:.3e} (in {})\n",
                            agreement->max_rel_difference, agreement->worst_tensor);
    return text;
}

// The tensors' rows of one order, each marked with its path.
json tensors_json(nn::ExecutionPath path, const GradcheckReport& report) {
    json rows = json::array();
    for (const InputCheck& check : report.inputs) {
        json entry = input_check_json(check);
        entry["path"] = path_name(path);
        if (check.name == "x" && !check.worst_index.empty()) entry["time_step"] = check.worst_index.front();
        rows.push_back(std::move(entry));
    }
    return rows;
}

json report_json(const GradcheckRequest& request, const std::vector<PathReport>& reports,
                 const std::optional<PathAgreement>& agreement) {
    const LayerConfig& config = request.layer;
    json result{{"passed", true}, {"max_abs_error", 0.0}, {"max_rel_error", 0.0}, {"tensors", json::array()}};
    result["config"] = {{"cell", config.cell},
                        {"input_size", config.input_size},
                        {"hidden_size", config.hidden_size},
                        {"layers", config.layers},
                        {"bidirectional", config.bidirectional},
                        {"bias", config.bias},
                        {"proj_size", config.proj_size},
                        {"seq_len", request.seq_len},
                        {"batch", request.batch},
                        {"lengths", request.lengths},
                        {"seed", request.seed}};
    // Every check of a path, whatever its order, decides "passed".
    auto passes = [&result](bool passed) { result["passed"] = result["passed"].get<bool>() && passed; };
    for (const PathReport& r : reports) {
        if (!r.path_note.empty()) result["path_notes"].push_back({{"path", path_name(r.path)}, {"note", r.path_note}});
        passes(r.report.passed && (!r.per_step || r.per_step->passed));
        result["max_abs_error"] = std::max(result["max_abs_error"].get<double>(), r.report.max_abs_error);
        result["max_rel_error"] = std::max(result["max_rel_error"].get<double>(), r.report.max_rel_error);
        for (json& row : tensors_json(r.path, r.report)) result["tensors"].push_back(std::move(row));
        if (r.per_step) result["per_step"].push_back(per_step_json(r.path, *r.per_step));
        if (r.second_order) {
            json second{{"path", path_name(r.path)},
                        {"passed", r.second_order->passed},
                        {"max_abs_error", r.second_order->max_abs_error},
                        {"max_rel_error", r.second_order->max_rel_error},
                        {"tensors", tensors_json(r.path, *r.second_order)}};
            if (r.second_order_per_step) second["per_step"] = per_step_json(r.path, *r.second_order_per_step);
            passes(r.second_order->passed && (!r.second_order_per_step || r.second_order_per_step->passed));
            result["second_order"].push_back(std::move(second));
        }
        if (r.jvp) {
            json tangents = json::array();
            for (const TangentCheck& tangent : r.jvp->tangents) {
                json outputs = json::array();
                for (std::size_t o = 0; o < tangent.outputs.size(); ++o) {
                    json entry = input_check_json(tangent.outputs[o]);
                    const AdjointCheck& a = tangent.adjoint[o];
                    entry["first_failed_row"] = nullptr;
                    if (tangent.outputs[o].first_failed_row) entry["first_failed_row"] = *tangent.outputs[o].first_failed_row;
                    entry["adjoint"] = {{"jvp_side", a.jvp_side}, {"vjp_side", a.vjp_side}, {"rel_error", a.rel_error},
                                        {"passed", a.passed}};
                    outputs.push_back(std::move(entry));
                }
                tangents.push_back({{"input", tangent.input}, {"passed", tangent.passed()}, {"outputs", outputs}});
            }
            result["jvp"].push_back({{"path", path_name(r.path)},
                                     {"passed", r.jvp->passed},
                                     {"max_abs_error", r.jvp->max_abs_error},
                                     {"max_rel_error", r.jvp->max_rel_error},
                                     {"max_adjoint_error", r.jvp->max_adjoint_error},
                                     {"tangents", tangents}});
            passes(r.jvp->passed);
        }
        if (r.hvp) {
            result["hvp"].push_back({{"path", path_name(r.path)},
                                     {"passed", r.hvp->passed},
                                     {"max_abs_error", r.hvp->max_abs_error},
                                     {"max_rel_error", r.hvp->max_rel_error},
                                     {"tensors", tensors_json(r.path, *r.hvp)}});
            passes(r.hvp->passed);
        }
    }
    if (agreement)
        result["paths_agreement"] = {{"max_rel_difference", agreement->max_rel_difference},
                                     {"worst_tensor", agreement->worst_tensor}};
    return result;
}

namespace {

// "x, weight_hh_l0, the per-step gradients from step 4 back": what one check found wrong.
std::vector<std::string> failed_parts(const GradcheckReport& report, const std::optional<nn::PerStepReport>& per_step,
                                      const std::string& what) {
    std::vector<std::string> names;
    for (const InputCheck& check : report.inputs)
        if (!check.passed) names.push_back(check.name);
    if (per_step && per_step->first_disagreeing_step)
        names.push_back(fmt::format("the per-step {} from step {} back", what, *per_step->first_disagreeing_step));
    return names;
}

// "J v of output from time step 3 on (tangents on x, h0), J v of h_n (tangent on x), the adjoint
// identity in 4 of 6 (tangent, output) pairs": what disagrees, and for which tangents.
std::string jvp_failures(const JvpReport& report) {
    std::vector<std::pair<std::string, std::vector<std::string>>> wrong;  // in the order first met
    std::size_t pairs = 0, adjoint_failed = 0;
    for (const TangentCheck& tangent : report.tangents)
        for (std::size_t o = 0; o < tangent.outputs.size(); ++o) {
            const InputCheck& check = tangent.outputs[o];
            ++pairs;
            adjoint_failed += tangent.adjoint[o].passed ? 0 : 1;
            if (check.passed) continue;
            const std::string what = check.first_failed_row && check.name == "output"
                                         ? fmt::format("J v of output from time step {} on", *check.first_failed_row)
                                         : fmt::format("J v of {}", check.name);
            auto at = std::find_if(wrong.begin(), wrong.end(), [&](const auto& w) { return w.first == what; });
            if (at == wrong.end()) at = wrong.insert(wrong.end(), {what, {}});
            at->second.push_back(tangent.input);
        }
    std::vector<std::string> parts;
    for (const auto& [what, inputs] : wrong)
        parts.push_back(fmt::format("{} (tangent{} on {})", what, inputs.size() == 1 ? "" : "s", fmt::join(inputs, ", ")));
    if (adjoint_failed > 0)
        parts.push_back(fmt::format("the adjoint identity in {} of {} (tangent, output) pairs", adjoint_failed, pairs));
    return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

std::string failure_summary(const std::vector<PathReport>& reports) {
    std::vector<std::string> failures;
    for (const PathReport& r : reports) {
        const std::string path = path_name(r.path);
        if (const auto names = failed_parts(r.report, r.per_step, "gradients"); !names.empty())
            failures.push_back(fmt::format("{} ({} path)", fmt::join(names, ", "), path));
        if (r.second_order)
            if (const auto names = failed_parts(*r.second_order, r.second_order_per_step, "second derivatives");
                !names.empty())
                failures.push_back(fmt::format("the second derivatives of {} ({} path)", fmt::join(names, ", "), path));
        if (r.jvp)
            if (const std::string wrong = jvp_failures(*r.jvp); !wrong.empty())
                failures.push_back(fmt::format("{} ({} path)", wrong, path));
        if (r.hvp)
            if (const auto names = failed_parts(*r.hvp, std::nullopt, ""); !names.empty())
                failures.push_back(fmt::format("H v in {} ({} path)", fmt::join(names, ", "), path));
    }
    if (failures.empty()) return {};
    return fmt::format("analytic and numeric gradients disagree for {}", fmt::join(failures, "; "));
}

}  // namespace rw::cli
