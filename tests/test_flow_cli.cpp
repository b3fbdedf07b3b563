// `rewind flow` run as a user runs it: figures that follow from the weights, trained weights
// read from a checkpoint, the CSV and the plot, and refusals that say what is wrong.

#include <algorithm>

#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>

#include <rewind/nn/analysis/gradient_flow.hpp>
#include <rewind/nn/io/state_dict.hpp>
#include <rewind/nn/train/checkpoint.hpp>

#include "cli_run.hpp"

using namespace cli_test;
using nlohmann::json;

namespace {

std::vector<std::string> flow_args(const std::string& cell, std::size_t steps, std::vector<std::string> more = {}) {
    std::vector<std::string> args{"flow", "--cell", cell, "--input-size", "3", "--hidden-size", "16", "--seq-len",
                                  std::to_string(steps), "--json"};
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(rewind_flow)

BOOST_AUTO_TEST_CASE(reports_every_step_of_a_tanh_rnn_and_an_lstm) {
    TempDir dir;
    const Run rnn = run_cli(dir, flow_args("rnn_tanh", 40, {"--sigma-steps", "5"}));
    BOOST_TEST_REQUIRE(rnn.exit_code == 0, rnn.err);
    const json r = json::parse(rnn.out);
    BOOST_TEST(r["layers"][0]["grad_norm"].size() == 40u);
    BOOST_TEST(r["layers"][0]["gates"].empty());
    BOOST_TEST(r["singular_value"][39].get<double>() == 1.0, boost::test_tools::tolerance(1e-12));
    std::size_t analysed = 0;
    for (const auto& sigma : r["singular_value"]) analysed += sigma.is_null() ? 0 : 1;
    BOOST_TEST(analysed == 5u);
    // PyTorch's default initialisation gives sigma_max(W_hh) well below 1 at H = 16: vanishing.
    BOOST_TEST(r["decay_per_step"].get<double>() < 0.9);

    const Run lstm = run_cli(dir, flow_args("lstm", 30, {"--sigma-steps", "0", "--forget-bias", "20"}));
    BOOST_TEST_REQUIRE(lstm.exit_code == 0, lstm.err);
    const json l = json::parse(lstm.out);
    BOOST_TEST(l["layers"][0]["gates"].size() == 4u);
    BOOST_TEST(l["layers"][0]["gates"]["forget"]["overall"].get<double>() == 1.0);  // a forget bias of 20 saturates
    BOOST_TEST(l["layers"][0]["gates"]["forget"]["per_step"].size() == 30u);
}

BOOST_AUTO_TEST_CASE(analyses_the_weights_of_a_checkpoint) {
    TempDir dir;
    // A model whose recurrent layer sits at "model.rnn." in the checkpoint, with W_hh scaled to
    // sigma_max 0.5: the command must find the layer and analyse these weights, not fresh ones.
    auto rnn = rw::nn::make_rnn<double>({.input_size = 3, .hidden_size = 16, .seed = 9, .init = {.orthogonal_recurrent = true}});
    auto& w = rnn->parameter("weight_hh_l0").mutable_value();
    w *= 0.5 / rw::nn::largest_singular_value(w);
    rw::nn::Module<double> model;
    model.register_module("rnn", rnn);
    rw::nn::Checkpoint<double>(model).save(dir / "model.safetensors");

    const Run run = run_cli(dir, flow_args("rnn_tanh", 30, {"--state", (dir / "model.safetensors").string()}));
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(report["config"]["prefix"].get<std::string>() == "model.rnn.");
    BOOST_TEST(report["layers"][0]["weight_hh_sigma_max"].get<double>() == 0.5, boost::test_tools::tolerance(1e-9));
    BOOST_TEST(report["decay_per_step"].get<double>() < 0.5);  // tanh' <= 1 on top of sigma_max 0.5

    const Run wrong_size = run_cli(dir, {"flow", "--cell", "rnn_tanh", "--input-size", "3", "--hidden-size", "8",
                                         "--seq-len", "5", "--state", (dir / "model.safetensors").string()});
    BOOST_TEST(wrong_size.exit_code == 1);
    BOOST_TEST(wrong_size.err.find("weight_ih_l0") != std::string::npos, wrong_size.err);
}

BOOST_AUTO_TEST_CASE(a_state_dict_with_two_layers_needs_a_prefix) {
    TempDir dir;
    rw::nn::Module<double> model;
    model.register_module("encoder", rw::nn::make_gru<double>({.input_size = 3, .hidden_size = 16}));
    model.register_module("decoder", rw::nn::make_gru<double>({.input_size = 3, .hidden_size = 16}));
    rw::nn::save_state_dict(model, dir / "two.safetensors");
    const Run ambiguous = run_cli(dir, flow_args("gru", 5, {"--state", (dir / "two.safetensors").string()}));
    BOOST_TEST(ambiguous.exit_code == 1);
    BOOST_TEST(ambiguous.err.find("'decoder.', 'encoder.'") != std::string::npos, ambiguous.err);
    BOOST_TEST(ambiguous.err.find("--prefix") != std::string::npos);
    const Run chosen = run_cli(dir, flow_args("gru", 5, {"--state", (dir / "two.safetensors").string(), "--prefix", "decoder."}));
    BOOST_TEST(chosen.exit_code == 0, chosen.err);
}

BOOST_AUTO_TEST_CASE(writes_every_step_to_csv_and_draws_the_plot) {
    TempDir dir;
    const Run run = run_cli(dir, {"flow", "--cell", "gru", "--input-size", "3", "--hidden-size", "8", "--seq-len", "12",
                                  "--layers", "2", "--csv", (dir / "flow.csv").string(), "--plot", (dir / "flow.png").string()});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const std::string csv = read_bytes(dir / "flow.csv");
    BOOST_TEST(csv.rfind("t,grad_norm_l0,grad_norm_l1,sigma_max,ratio,saturated_reset_l0,", 0) == 0u, csv.substr(0, 120));
    BOOST_TEST(std::count(csv.begin(), csv.end(), '\n') == 13);
    BOOST_TEST(read_bytes(dir / "flow.png").substr(1, 3) == "PNG");
    BOOST_TEST(run.out.find("per-step decay factor") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(takes_the_structure_options_of_the_other_commands) {
    TempDir dir;
    const Run projected = run_cli(dir, flow_args("lstm", 12, {"--proj-size", "4", "--layers", "2", "--sigma-steps", "3"}));
    BOOST_TEST_REQUIRE(projected.exit_code == 0, projected.err);
    const json p = json::parse(projected.out);
    BOOST_TEST(p["config"]["proj_size"].get<int>() == 4);
    BOOST_TEST(p["layers"].size() == 2u);
    BOOST_TEST(p["layers"][1]["grad_norm"].size() == 12u);
    BOOST_TEST(p["layers"][1]["gates"].size() == 4u);  // saturation from the 16 gate units, h of 4
    BOOST_TEST(p["singular_value"][11].get<double>() == 1.0, boost::test_tools::tolerance(1e-12));  // dh_T/dh_T, P x P
    const Run unbiased = run_cli(dir, flow_args("gru", 6, {"--no-bias"}));
    BOOST_TEST_REQUIRE(unbiased.exit_code == 0, unbiased.err);
    BOOST_TEST(!json::parse(unbiased.out)["config"]["bias"].get<bool>());
    const Run gru = run_cli(dir, flow_args("gru", 5, {"--proj-size", "2"}));
    BOOST_TEST(gru.exit_code == 2);
    BOOST_TEST(gru.err.find("--proj-size: applies to --cell lstm only") != std::string::npos, gru.err);
}

BOOST_AUTO_TEST_CASE(refuses_options_that_do_not_apply) {
    TempDir dir;
    const Run bias = run_cli(dir, flow_args("gru", 5, {"--forget-bias", "3"}));
    BOOST_TEST(bias.exit_code == 1);
    BOOST_TEST(bias.err.find("--forget-bias applies to --cell lstm only") != std::string::npos, bias.err);
    const Run bidirectional = run_cli(dir, flow_args("gru", 5, {"--bidirectional"}));
    BOOST_TEST(bidirectional.exit_code == 2);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(rewind_gradcheck_per_step)

BOOST_AUTO_TEST_CASE(reports_every_step_as_text_and_json) {
    TempDir dir;
    const std::vector<std::string> args{"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "4",
                                        "--seq-len", "5", "--batch", "2", "--layers", "2", "--bidirectional",
                                        "--lengths", "5,3", "--per-step"};
    const Run text = run_cli(dir, args);
    BOOST_TEST_REQUIRE(text.exit_code == 0, text.err);
    BOOST_TEST(text.out.find("per step, generic path: dL/dx_t and dL/dh_t") != std::string::npos, text.out);
    BOOST_TEST(text.out.find("every step agrees") != std::string::npos);

    std::vector<std::string> json_args = args;
    json_args.push_back("--json");
    const Run run = run_cli(dir, json_args);
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);
    const json& per_step = report["per_step"][0];
    BOOST_TEST(per_step["path"].get<std::string>() == "generic");
    BOOST_TEST(per_step["first_disagreeing_step"].is_null());
    BOOST_TEST_REQUIRE(per_step["steps"].size() == 5u);
    BOOST_TEST(per_step["steps"][4]["step"].get<int>() == 4);
    BOOST_TEST(per_step["steps"][4]["hidden"].size() == 4u);  // 2 layers x 2 directions
    BOOST_TEST(per_step["steps"][4]["hidden"][1]["name"].get<std::string>() == "h_l0_reverse");
    BOOST_TEST(per_step["steps"][0]["x"]["max_abs_error"].get<double>() < 1e-7);
}

BOOST_AUTO_TEST_CASE(names_the_step_of_a_planted_error) {
    // Step 5's backward is off by 1% in layer 0's forward direction: dL/dx_5 and everything before
    // it disagree, steps 6 and 7 agree, and dL/dh_5 itself is right.
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "3", "--hidden-size", "4", "--seq-len", "8",
                                  "--batch", "2", "--layers", "2", "--bidirectional", "--per-step", "--plant-error", "5",
                                  "--json"});
    BOOST_TEST(run.exit_code == 1, run.err);
    BOOST_TEST(run.err.find("the per-step gradients from step 5 back") != std::string::npos, run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(!report["passed"].get<bool>());
    const json& per_step = report["per_step"][0];
    BOOST_TEST(per_step["first_disagreeing_step"].get<int>() == 5);
    const json& steps = per_step["steps"];
    BOOST_TEST(!steps[5]["x"]["passed"].get<bool>());
    BOOST_TEST(steps[5]["hidden"][0]["passed"].get<bool>());
    BOOST_TEST(!steps[4]["hidden"][0]["passed"].get<bool>());
    BOOST_TEST(steps[6]["passed"].get<bool>());
    BOOST_TEST(steps[7]["passed"].get<bool>());

    const Run text = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "4", "--seq-len",
                                   "6", "--batch", "2", "--per-step", "--plant-error", "2"});
    BOOST_TEST(text.exit_code == 1);
    BOOST_TEST(text.out.find("first disagreement walking back from T: step 2 (steps 3..5 agree)") != std::string::npos,
               text.out);
    const Run outside = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "4",
                                      "--seq-len", "6", "--batch", "2", "--plant-error", "6"});
    BOOST_TEST(outside.exit_code == 1);
    BOOST_TEST(outside.err.find("--plant-error: step 6 is outside 0..5") != std::string::npos, outside.err);
}

BOOST_AUTO_TEST_CASE(on_the_fused_path_checks_x_t_only_and_says_so) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "3", "--hidden-size", "4", "--seq-len",
                                  "4", "--batch", "2", "--path", "both", "--per-step", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);
    BOOST_TEST_REQUIRE(report["per_step"].size() == 2u);
    BOOST_TEST(report["per_step"][0]["hidden_checked"].get<bool>());
    BOOST_TEST(report["per_step"][1]["path"].get<std::string>() == "fused");
    BOOST_TEST(!report["per_step"][1]["hidden_checked"].get<bool>());
    const Run text = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "3", "--hidden-size", "4", "--seq-len",
                                   "4", "--batch", "2", "--path", "fused", "--per-step"});
    BOOST_TEST(text.out.find("dL/dh_t not checked: the fused kernel") != std::string::npos, text.out);
}

BOOST_AUTO_TEST_SUITE_END()
