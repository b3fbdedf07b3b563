// `rewind gradcheck --second-order` and `--jvp` (issue 20): second derivatives of a layer against
// central differences of its gradients, per tensor and per time step; forward mode against central
// differences and the adjoint identity, and H v; run as a user runs the tool, each with a planted
// error that only it can see, which it must name.

#include <algorithm>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"

using nlohmann::json;
using namespace cli_test;

namespace {

std::vector<std::string> gradcheck_args(std::vector<std::string> layer, const std::vector<std::string>& extra) {
    layer.insert(layer.begin(), "gradcheck");
    layer.insert(layer.end(), extra.begin(), extra.end());
    return layer;
}

std::string option_value(const std::vector<std::string>& args, const std::string& option) {
    const auto at = std::find(args.begin(), args.end(), option);
    BOOST_REQUIRE(at != args.end() && at + 1 != args.end());
    return *(at + 1);
}

// Every tensor row of one order's report passed.
bool all_passed(const json& tensors) {
    for (const auto& tensor : tensors)
        if (!tensor.at("passed").get<bool>()) return false;
    return !tensors.empty();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cli_second_order)

BOOST_AUTO_TEST_CASE(second_order_passes_for_stacked_bidirectional_layers_with_lengths) {
    TempDir dir;
    const std::vector<std::vector<std::string>> layers{
        {"--cell", "lstm", "--layers", "2", "--bidirectional", "--input-size", "2", "--hidden-size", "2", "--seq-len", "4",
         "--batch", "3", "--lengths", "4,2,3"},
        {"--cell", "gru", "--input-size", "3", "--hidden-size", "2", "--seq-len", "3", "--batch", "2", "--seed", "7"},
        {"--cell", "rnn_tanh", "--layers", "2", "--input-size", "2", "--hidden-size", "3", "--seq-len", "4", "--batch",
         "2", "--no-bias"},
    };
    for (const auto& layer : layers) {
        const auto args = gradcheck_args(layer, {"--second-order", "--per-step", "--path", "generic", "--json"});
        BOOST_TEST_CONTEXT(fmt::format("rewind {}", fmt::join(args, " "))) {
            const Run run = run_cli(dir, args);
            BOOST_TEST_REQUIRE(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
            const json report = json::parse(run.out);
            BOOST_TEST(report.at("passed").get<bool>());
            const json& second = report.at("second_order").at(0);
            BOOST_TEST(second.at("path") == "generic");
            BOOST_TEST(all_passed(second.at("tensors")));
            BOOST_TEST(second.at("per_step").at("first_disagreeing_step").is_null());
            BOOST_TEST(second.at("per_step").at("steps").size() == std::stoul(option_value(layer, "--seq-len")));
        }
    }
}

BOOST_AUTO_TEST_CASE(second_order_through_the_fused_double_backward_passes_and_the_fused_op_ran) {
    TempDir dir;
    const auto args = gradcheck_args({"--cell", "lstm", "--layers", "2", "--bidirectional", "--input-size", "2",
                                      "--hidden-size", "2", "--seq-len", "4", "--batch", "3", "--lengths", "4,1,3"},
                                     {"--second-order", "--per-step", "--path", "both", "--json"});
    const Run run = run_cli(dir, args);
    BOOST_TEST_REQUIRE(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(!report.contains("path_notes"), run.out);  // no fallback to step(): the fused op ran
    BOOST_TEST_REQUIRE(report.at("second_order").size() == 2u);
    const json& fused = report.at("second_order").at(1);
    BOOST_TEST(fused.at("path") == "fused");
    BOOST_TEST(all_passed(fused.at("tensors")));
    BOOST_TEST(fused.at("per_step").at("hidden_checked").get<bool>() == false);  // h_t stays inside the fused op
    BOOST_TEST(fused.at("per_step").at("passed").get<bool>());
}

BOOST_AUTO_TEST_CASE(a_wrong_second_order_rule_at_one_step_is_named_and_the_first_order_check_misses_it) {
    // The backward of step 3 is right in value, its derivative wrong (cli/planted_error.cpp): the
    // first-order checks pass, the second-order ones fail, and the per-step one names step 3.
    TempDir dir;
    const auto args = gradcheck_args({"--cell", "gru", "--input-size", "2", "--hidden-size", "3", "--seq-len", "6",
                                      "--batch", "2"},
                                     {"--second-order", "--per-step", "--plant-error", "3", "--path", "generic", "--json"});
    const Run run = run_cli(dir, args);
    BOOST_TEST_REQUIRE(run.exit_code == 1, "stdout:\n" << run.out << "stderr:\n" << run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(!report.at("passed").get<bool>());
    BOOST_TEST(all_passed(report.at("tensors")));
    BOOST_TEST(report.at("per_step").at(0).at("first_disagreeing_step").is_null());
    const json& second = report.at("second_order").at(0);
    BOOST_TEST(!second.at("passed").get<bool>());
    BOOST_TEST(second.at("per_step").at("first_disagreeing_step").get<int>() == 3);
    for (const auto& step : second.at("per_step").at("steps"))
        BOOST_TEST(step.at("passed").get<bool>() == (step.at("step").get<int>() > 3), step.dump());
    BOOST_TEST(run.err.find("the per-step second derivatives from step 3 back (generic path)") != std::string::npos, run.err);
}

BOOST_AUTO_TEST_CASE(the_text_report_says_which_step_and_which_rule_is_wrong) {
    TempDir dir;
    const auto args = gradcheck_args({"--cell", "lstm", "--input-size", "2", "--hidden-size", "2", "--seq-len", "5",
                                      "--batch", "2"},
                                     {"--second-order", "--per-step", "--plant-error", "2", "--path", "generic"});
    const Run run = run_cli(dir, args);
    BOOST_TEST(run.exit_code == 1, run.out << run.err);
    BOOST_TEST(run.out.find("second order per step, generic path") != std::string::npos, run.out);
    BOOST_TEST(run.out.find("first disagreement walking back from T: step 2 (steps 3..4 agree): dG/dh_2 is right but "
                            "dG/dx_2 wrong, so the second-order rule (the derivative of the backward) of step 2 itself "
                            "is wrong") != std::string::npos,
               run.out);
    BOOST_TEST(run.err.rfind("rewind gradcheck: analytic and numeric gradients disagree for the second derivatives of ", 0) == 0,
               run.err);
}

BOOST_AUTO_TEST_CASE(jvp_holds_the_adjoint_identity_to_1e_12_and_hvp_agrees_on_both_paths) {
    TempDir dir;
    const auto args = gradcheck_args({"--cell", "gru", "--layers", "2", "--bidirectional", "--input-size", "2",
                                      "--hidden-size", "3", "--seq-len", "4", "--batch", "3", "--lengths", "4,1,3"},
                                     {"--jvp", "--path", "both", "--json"});
    const Run run = run_cli(dir, args);
    BOOST_TEST_REQUIRE(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(!report.contains("path_notes"), run.out);  // the fused op ran
    BOOST_TEST_REQUIRE(report.at("jvp").size() == 2u);
    for (const auto& jvp : report.at("jvp")) {
        BOOST_TEST(jvp.at("passed").get<bool>());
        BOOST_TEST(jvp.at("max_adjoint_error").get<double>() <= 1e-12);
        // A tangent on every parameter of both layers and directions, x and h0, each through output and h_n.
        BOOST_TEST(jvp.at("tangents").size() == 4u * 4u + 2u);
        BOOST_TEST(jvp.at("tangents").at(0).at("outputs").size() == 2u);
    }
    BOOST_TEST(report.at("jvp").at(1).at("path") == "fused");
    for (const auto& hvp : report.at("hvp")) BOOST_TEST(all_passed(hvp.at("tensors")));
}

BOOST_AUTO_TEST_CASE(a_forward_rule_planted_wrong_at_one_step_is_named_by_the_time_step_where_j_v_first_disagrees) {
    // The backward stays right (first order passes); the tangent of step 3's new hidden state is
    // 1% off, so J v of the output is right before step 3 and wrong from it on.
    TempDir dir;
    const auto args = gradcheck_args({"--cell", "lstm", "--input-size", "2", "--hidden-size", "3", "--seq-len", "6",
                                      "--batch", "2"},
                                     {"--jvp", "--plant-error", "3", "--path", "generic", "--json"});
    const Run run = run_cli(dir, args);
    BOOST_TEST_REQUIRE(run.exit_code == 1, "stdout:\n" << run.out << "stderr:\n" << run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(all_passed(report.at("tensors")));
    const json& jvp = report.at("jvp").at(0);
    BOOST_TEST(!jvp.at("passed").get<bool>());
    for (const auto& tangent : jvp.at("tangents")) {
        const json& output = tangent.at("outputs").at(0);
        BOOST_TEST_CONTEXT(tangent.at("input")) {
            BOOST_TEST(output.at("name") == "output");
            BOOST_TEST(output.at("first_failed_row").get<int>() == 3);
            BOOST_TEST(!output.at("adjoint").at("passed").get<bool>());
        }
    }
    BOOST_TEST(run.err.find("J v of output from time step 3 on (tangents on weight_ih_l0, weight_hh_l0, bias_ih_l0, "
                            "bias_hh_l0, x, h0, c0)") != std::string::npos, run.err);
    BOOST_TEST(run.err.find("the adjoint identity in 21 of 21 (tangent, output) pairs (generic path)") != std::string::npos,
               run.err);
}

BOOST_AUTO_TEST_CASE(jvp_and_second_order_are_one_or_the_other) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "2", "--hidden-size", "2", "--seq-len", "2",
                                  "--batch", "1", "--jvp", "--second-order"});
    BOOST_TEST(run.exit_code == 2, run.err);
    BOOST_TEST(run.err.find("--second-order excludes --jvp") != std::string::npos, run.err);
}

BOOST_AUTO_TEST_SUITE_END()
