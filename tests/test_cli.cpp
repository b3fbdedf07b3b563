// The `rewind` command line, run as a separate process the way a user runs it: parity of
// `rewind grad` with PyTorch's fixtures, `rewind gradcheck`, and how bad input is reported.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <rewind/nn/io/safetensors.hpp>

#include "cli_run.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace cli_test;

namespace {

const fs::path fixtures = fs::path(REWIND_TESTS_DIR) / "fixtures";

std::vector<std::string> grad_args(const json& c, const fs::path& state, const fs::path& inputs, const fs::path& out) {
    std::vector<std::string> args{"grad",
                                  "--cell", c.at("cell").get<std::string>(),
                                  "--input-size", std::to_string(c.at("input_size").get<int>()),
                                  "--hidden-size", std::to_string(c.at("hidden_size").get<int>()),
                                  "--layers", std::to_string(c.at("layers").get<int>()),
                                  "--state", state.string(), "--inputs", inputs.string(), "--out", out.string()};
    if (c.at("bidirectional").get<bool>()) args.push_back("--bidirectional");
    if (!c.at("bias").get<bool>()) args.push_back("--no-bias");
    if (const int proj_size = c.at("proj_size").get<int>(); proj_size > 0)
        args.insert(args.end(), {"--proj-size", std::to_string(proj_size)});
    return args;
}

json load_cases() { return json::parse(read_bytes(fixtures / "cases.json")); }

json find_case(const std::string& name) {
    for (const auto& c : load_cases())
        if (c.at("name") == name) return c;
    throw std::runtime_error("no fixture case " + name);
}

// How far OUT's tensor is from PyTorch's: the largest |a - b| / max(1, |b|) over the elements
// (relative for large values, absolute for small ones; b is PyTorch's value), and a description
// of the problem when it exceeds the tolerance (1e-10 for F64, 1e-4 for F32) or the tensors do
// not even have the same dtype and shape.
struct Comparison {
    double worst = 0;
    std::string problem;
};

template <class Array>
Comparison compare(const Array& actual, const Array& expected, double tolerance) {
    Comparison result;
    std::size_t worst_at = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const double a = actual.data()[i], b = expected.data()[i];
        const double error = std::abs(a - b) / std::max(1.0, std::abs(b));
        if (!(error <= result.worst)) result.worst = error, worst_at = i;  // NaN counts as the worst
    }
    if (!(result.worst <= tolerance))
        result.problem = fmt::format("flat element {}: {} vs PyTorch {} (scaled error {:.3e} > {:g})", worst_at,
                                     actual.data()[worst_at], expected.data()[worst_at], result.worst, tolerance);
    return result;
}

Comparison compare(const rw::nn::StoredArray& actual, const rw::nn::StoredArray& expected) {
    using rw::nn::dtype_name, rw::nn::shape_of;
    if (dtype_name(actual) != dtype_name(expected))
        return {INFINITY, "dtype " + dtype_name(actual) + " vs PyTorch " + dtype_name(expected)};
    if (shape_of(actual) != shape_of(expected))
        return {INFINITY, fmt::format("shape [{}] vs PyTorch [{}]", fmt::join(shape_of(actual), ", "),
                                      fmt::join(shape_of(expected), ", "))};
    if (const auto* e = std::get_if<xt::xarray<double>>(&expected))
        return compare(std::get<xt::xarray<double>>(actual), *e, 1e-10);
    if (const auto* e = std::get_if<xt::xarray<float>>(&expected))
        return compare(std::get<xt::xarray<float>>(actual), *e, 1e-4);
    return {INFINITY, "unexpected I64 tensor"};
}

// Bad input must be reported as exactly one line starting with "rewind grad: " that contains
// `mentions`, with a non-zero exit code, and must leave an existing OUT file untouched.
void expect_rejected(const TempDir& dir, const std::vector<std::string>& args, const fs::path& out,
                     const std::vector<std::string>& mentions) {
    const std::string before = "an earlier result that a failed run must not touch\n";
    write_bytes(out, before);
    const Run run = run_cli(dir, args);
    BOOST_TEST(run.exit_code != 0);
    BOOST_TEST(run.exit_code != -1);
    BOOST_TEST(std::count(run.err.begin(), run.err.end(), '\n') == 1, "stderr is not one line: " << run.err);
    BOOST_TEST(run.err.back() == '\n');
    BOOST_TEST(run.err.rfind("rewind grad: ", 0) == 0, "stderr: " << run.err);
    for (const auto& word : mentions) BOOST_TEST(run.err.find(word) != std::string::npos, "'" << word << "' not in " << run.err);
    BOOST_TEST(read_bytes(out) == before, "OUT was modified");
}

}  // namespace

namespace {

void check_fixtures_on(const std::string& path) {
    const json cases = load_cases();
    BOOST_TEST(cases.size() > 0u);
    for (const auto& c : cases) {
        const std::string name = c.at("name");
        BOOST_TEST_CONTEXT("fixture case " << name << " on the " << path << " path") {
            TempDir dir;
            const fs::path directory = fixtures / name, out = dir / "out.safetensors";
            auto args = grad_args(c, directory / "state.safetensors", directory / "inputs.safetensors", out);
            args.insert(args.end(), {"--path", path});
            const Run run = run_cli(dir, args);
            BOOST_TEST_REQUIRE(run.exit_code == 0, "exit " << run.exit_code << ", stderr: " << run.err);
            BOOST_TEST(run.err.empty());
            const auto expected = rw::nn::load_safetensors(directory / "expected.safetensors");
            const auto actual = rw::nn::load_safetensors(out);
            std::pair<double, std::string> worst{0.0, ""};
            for (const auto& [tensor, value] : expected) {
                BOOST_TEST_CONTEXT("tensor " << tensor) {
                    const auto found = actual.find(tensor);
                    BOOST_TEST_REQUIRE((found != actual.end()), "missing from OUT");
                    const Comparison comparison = compare(found->second, value);
                    BOOST_TEST(comparison.problem.empty(), comparison.problem);
                    worst = std::max(worst, std::pair{comparison.worst, tensor});
                }
            }
            BOOST_TEST_MESSAGE(fmt::format("{}: largest scaled difference {:.3e}, in {}", name, worst.first, worst.second));
            for (const auto& [tensor, value] : actual)
                BOOST_TEST(expected.contains(tensor), "OUT has a tensor PyTorch does not: " << tensor);
        }
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cli)

BOOST_AUTO_TEST_CASE(grad_matches_pytorch_fixtures_on_the_generic_path) { check_fixtures_on("generic"); }

BOOST_AUTO_TEST_CASE(grad_matches_pytorch_fixtures_on_the_fused_path) { check_fixtures_on("fused"); }

BOOST_AUTO_TEST_CASE(gradcheck_passes) {
    TempDir dir;
    const std::vector<std::vector<std::string>> configurations{
        {"--cell", "lstm", "--layers", "2", "--bidirectional", "--input-size", "2", "--hidden-size", "3", "--seq-len", "4",
         "--batch", "3", "--lengths", "4,2,3"},
        {"--cell", "gru", "--input-size", "3", "--hidden-size", "2", "--seq-len", "3", "--batch", "2",
         "--seed", "7"},
        {"--cell", "rnn_relu", "--layers", "2", "--input-size", "2", "--hidden-size", "3", "--seq-len", "4", "--batch", "2",
         "--lengths", "1,4", "--seed", "3"},
    };
    for (auto args : configurations) {
        args.insert(args.begin(), "gradcheck");
        BOOST_TEST_CONTEXT(fmt::format("rewind {}", fmt::join(args, " "))) {
            const Run run = run_cli(dir, args);
            BOOST_TEST(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
            BOOST_TEST(run.out.find("(time step ") != std::string::npos, run.out);
        }
    }
}

BOOST_AUTO_TEST_CASE(gradcheck_json) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "2", "--hidden-size", "2", "--seq-len", "3",
                                  "--batch", "2", "--bidirectional", "--lengths", "3,1", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);  // throws unless stdout is exactly one JSON value
    BOOST_TEST(report.at("passed").get<bool>());
    BOOST_TEST(report.at("max_abs_error").is_number());
    BOOST_TEST(report.at("max_rel_error").is_number());
    std::vector<std::string> names;
    for (const auto& tensor : report.at("tensors")) {
        names.push_back(tensor.at("name"));
        BOOST_TEST(tensor.at("max_abs_error").is_number());
        BOOST_TEST(tensor.at("max_rel_error").is_number());
        BOOST_TEST(tensor.at("worst_index").is_array());
        if (tensor.at("name") == "x") BOOST_TEST(tensor.at("time_step") == tensor.at("worst_index")[0]);
    }
    for (const std::string name : {"weight_ih_l0", "bias_hh_l0_reverse", "x", "h0", "c0"})
        BOOST_TEST((std::find(names.begin(), names.end(), name) != names.end()), name << " not checked");
}

BOOST_AUTO_TEST_CASE(gradcheck_on_both_paths_reports_each) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "gru", "--layers", "2", "--bidirectional", "--input-size", "3",
                                  "--hidden-size", "2", "--seq-len", "5", "--batch", "3", "--lengths", "5,2,4",
                                  "--path", "both", "--seed", "11"});
    BOOST_TEST(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
    BOOST_TEST(run.out.find("generic") != std::string::npos, run.out);
    BOOST_TEST(run.out.find("fused") != std::string::npos, run.out);
    BOOST_TEST(run.out.find("fused vs generic analytic gradients: max relative difference") != std::string::npos, run.out);
}

BOOST_AUTO_TEST_CASE(gradcheck_of_a_projected_lstm_runs_its_fused_path) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "3",
                                  "--proj-size", "2", "--no-bias", "--seq-len", "4", "--batch", "2", "--path", "both"});
    BOOST_TEST(run.exit_code == 0, "stdout:\n" << run.out << "stderr:\n" << run.err);
    BOOST_TEST(run.out.find("hidden 3, no bias, proj_size 2") != std::string::npos, run.out);
    BOOST_TEST(run.out.find("weight_hr_l0") != std::string::npos, run.out);
    BOOST_TEST(run.out.find("bias_ih_l0") == std::string::npos, run.out);
    BOOST_TEST(run.out.find("ran step()") == std::string::npos, run.out);  // the fused path really ran
    const Run json_run = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "4",
                                       "--proj-size", "2", "--layers", "2", "--bidirectional", "--seq-len", "5",
                                       "--batch", "3", "--lengths", "5,2,4", "--path", "both", "--json"});
    BOOST_TEST_REQUIRE(json_run.exit_code == 0, json_run.err);
    const json report = json::parse(json_run.out);
    BOOST_TEST(report.at("config").at("proj_size").get<int>() == 2);
    BOOST_TEST(report.at("paths_agreement").at("max_rel_difference").get<double>() <= 1e-12, json_run.out);
}

BOOST_AUTO_TEST_CASE(every_command_that_builds_a_layer_takes_the_same_layer_options) {
    TempDir dir;
    for (const std::string command : {"grad", "gradcheck", "bench", "flow", "check-fused"}) {
        BOOST_TEST_CONTEXT(command) {
            const Run help = run_cli(dir, {command, "--help"});
            BOOST_TEST(help.exit_code == 0, help.err);
            for (const char* option : {"--no-bias", "--proj-size"})
                BOOST_TEST(help.out.find(option) != std::string::npos, option << " missing from:\n" << help.out);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_planted_error_keeps_the_layer_options) {
    // --plant-error wraps the cell the layer options made: no biases, h of the projected width,
    // and the planted step still named.
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "lstm", "--input-size", "3", "--hidden-size", "4",
                                  "--proj-size", "2", "--no-bias", "--seq-len", "6", "--batch", "2", "--per-step",
                                  "--plant-error", "2", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 1, "stdout:\n" << run.out << "stderr:\n" << run.err);
    const json report = json::parse(run.out);
    std::vector<std::string> names;
    for (const auto& tensor : report.at("tensors")) names.push_back(tensor.at("name"));
    BOOST_TEST((std::find(names.begin(), names.end(), "weight_hr_l0") != names.end()), run.out);
    BOOST_TEST((std::find(names.begin(), names.end(), "bias_ih_l0") == names.end()), run.out);
    BOOST_TEST(report.at("per_step")[0].at("first_disagreeing_step").get<int>() == 2);
    const Run gru = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "3", "--hidden-size", "4", "--no-bias",
                                  "--seq-len", "4", "--batch", "2", "--plant-error", "1"});
    BOOST_TEST(gru.exit_code == 1, gru.err);
    BOOST_TEST(gru.out.find("no bias") != std::string::npos, gru.out);
    BOOST_TEST(gru.out.find("bias_hh_l0") == std::string::npos, gru.out);
}

BOOST_AUTO_TEST_CASE(gradcheck_on_both_paths_finds_them_equal_to_round_off) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "lstm", "--layers", "2", "--bidirectional", "--input-size", "3",
                                  "--hidden-size", "4", "--seq-len", "6", "--batch", "3", "--lengths", "6,1,4",
                                  "--path", "both", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(report.at("paths_agreement").at("max_rel_difference").get<double>() <= 1e-12, run.out);
}

BOOST_AUTO_TEST_CASE(gradcheck_fails_and_says_so_when_a_gradient_is_wrong) {
    // A tolerance no float64 central difference meets: the check must fail, exit 1 and name a tensor.
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "rnn_tanh", "--input-size", "2", "--hidden-size", "2",
                                  "--seq-len", "3", "--batch", "1", "--atol", "0", "--rtol", "0"});
    BOOST_TEST(run.exit_code == 1, run.out << run.err);
    BOOST_TEST(run.err.rfind("rewind gradcheck: ", 0) == 0, run.err);
}

BOOST_AUTO_TEST_CASE(check_fused_checks_the_projected_lstm_with_proj_size) {
    TempDir dir;
    const Run run = run_cli(dir, {"check-fused", "--proj-size", "2", "--no-bias", "--seq-len", "4", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.out << run.err);
    const json report = json::parse(run.out);  // one line: the only cell with projections
    BOOST_TEST(report.at("cell").get<std::string>() == "lstm");
    BOOST_TEST(report.at("passed").get<bool>());
    BOOST_TEST(report.at("forward").at("gradients").contains("weight_hr"));
    BOOST_TEST(!report.at("forward").at("gradients").contains("bias_ih"));
    const Run gru = run_cli(dir, {"check-fused", "--cell", "gru", "--proj-size", "2"});
    BOOST_TEST(gru.exit_code == 2);
    BOOST_TEST(gru.err.find("--proj-size: applies to --cell lstm only, got --cell gru") != std::string::npos, gru.err);
}

BOOST_AUTO_TEST_CASE(check_fused_passes_every_built_in_cell_per_step) {
    TempDir dir;
    const Run run = run_cli(dir, {"check-fused", "--seq-len", "4", "--batch", "3", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.out << run.err);
    std::istringstream lines(run.out);
    std::vector<std::string> cells;
    for (std::string line; std::getline(lines, line);) {
        const json report = json::parse(line);
        cells.push_back(report.at("cell").get<std::string>());
        BOOST_TEST(report.at("passed").get<bool>());
        BOOST_TEST(report.at("forward").at("steps").size() == 4u);
        BOOST_TEST(report.at("reverse").at("steps").size() == 4u);
        BOOST_TEST(report.at("forward").at("steps").at(0).at("backward").contains("h"));
    }
    BOOST_TEST(cells == (std::vector<std::string>{"rnn_tanh", "rnn_relu", "lstm", "gru"}));
    const Run unknown = run_cli(dir, {"check-fused", "--cell", "mgu"});
    BOOST_TEST(unknown.exit_code == 2, unknown.err);
}

BOOST_AUTO_TEST_CASE(cells_lists_the_table_of_cells_that_help_refers_to) {
    TempDir dir;
    const Run help = run_cli(dir, {"bench", "--help"});
    BOOST_TEST(help.out.find("rewind cells") != std::string::npos, help.out);
    const Run run = run_cli(dir, {"cells", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json cells = json::parse(run.out);
    std::vector<std::string> names;
    for (const auto& cell : cells) names.push_back(cell.at("name"));
    BOOST_TEST((names == std::vector<std::string>{"rnn_tanh", "rnn_relu", "lstm", "gru"}));
    const json& lstm = cells.at(2);
    BOOST_TEST(lstm.at("gates").get<int>() == 4);
    BOOST_TEST((lstm.at("gate_names").get<std::vector<std::string>>() ==
                std::vector<std::string>{"input", "forget", "cell", "output"}));
    BOOST_TEST((lstm.at("states").get<std::vector<std::string>>() == std::vector<std::string>{"h", "c"}));
    BOOST_TEST((lstm.at("options").get<std::vector<std::string>>() == std::vector<std::string>{"--no-bias", "--proj-size"}));
    BOOST_TEST(lstm.at("fused").get<bool>());
    BOOST_TEST((cells.at(3).at("options").get<std::vector<std::string>>() == std::vector<std::string>{"--no-bias"}));
    const Run text = run_cli(dir, {"cells"});
    BOOST_TEST_REQUIRE(text.exit_code == 0, text.err);
    BOOST_TEST(text.out.find("gru       3 (reset, update, new)") != std::string::npos, text.out);
}

BOOST_AUTO_TEST_CASE(gradcheck_rejects_bad_lengths) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "gru", "--input-size", "2", "--hidden-size", "2", "--seq-len", "3",
                                  "--batch", "2", "--lengths", "3,4"});
    BOOST_TEST(run.exit_code == 1);
    BOOST_TEST(run.err.rfind("rewind gradcheck: --lengths", 0) == 0, run.err);
}

BOOST_AUTO_TEST_CASE(grad_rejects_bad_input) {
    const json c = find_case("lstm_l2_bi_len_f64");
    const fs::path directory = fixtures / c.at("name").get<std::string>();
    const fs::path state = directory / "state.safetensors", inputs = directory / "inputs.safetensors";
    TempDir dir;
    const fs::path out = dir / "out.safetensors";
    const auto original = rw::nn::load_safetensors(inputs);
    const std::size_t steps = rw::nn::shape_of(original.at("x"))[0];
    // INPUTS with one tensor replaced.
    auto inputs_with = [&](const std::string& file, const std::string& name, rw::nn::StoredArray value) {
        auto tensors = original;
        tensors.insert_or_assign(name, std::move(value));
        rw::nn::save_safetensors(dir / file, tensors);
        return dir / file;
    };
    auto lengths_with = [&](std::size_t index, std::int64_t length) {
        auto lengths = std::get<xt::xarray<std::int64_t>>(original.at("lengths"));
        lengths(index) = length;
        return lengths;
    };

    BOOST_TEST_CONTEXT("missing inputs file") {
        expect_rejected(dir, grad_args(c, state, dir / "no_such_inputs.safetensors", out), out, {"no_such_inputs.safetensors"});
    }
    BOOST_TEST_CONTEXT("wrong x shape") {
        const auto bad = inputs_with("bad_x.safetensors", "x", xt::xarray<double>::from_shape({steps, 4, 5}));
        expect_rejected(dir, grad_args(c, state, bad, out), out, {"'x'", "shape"});
    }
    BOOST_TEST_CONTEXT("--proj-size on a GRU") {
        json gru = find_case("gru_l1_f64");
        gru["proj_size"] = 1;
        const fs::path gru_dir = fixtures / "gru_l1_f64";
        expect_rejected(dir, grad_args(gru, gru_dir / "state.safetensors", gru_dir / "inputs.safetensors", out), out,
                        {"--proj-size", "lstm only"});
    }
    BOOST_TEST_CONTEXT("a length of 0") {
        const auto bad = inputs_with("len0.safetensors", "lengths", lengths_with(1, 0));
        expect_rejected(dir, grad_args(c, state, bad, out), out, {"lengths", "length 0"});
    }
    BOOST_TEST_CONTEXT("a length beyond T") {
        const auto bad = inputs_with("len_big.safetensors", "lengths", lengths_with(0, std::int64_t(steps) + 1));
        expect_rejected(dir, grad_args(c, state, bad, out), out, {"lengths", fmt::format("length {}", steps + 1)});
    }
    BOOST_TEST_CONTEXT("truncated state file") {
        const std::string bytes = read_bytes(state);
        write_bytes(dir / "truncated_state.safetensors", bytes.substr(0, bytes.size() / 2));
        expect_rejected(dir, grad_args(c, dir / "truncated_state.safetensors", inputs, out), out,
                        {"truncated_state.safetensors"});
    }
    BOOST_TEST_CONTEXT("unknown tensor in INPUTS") {
        const auto bad = inputs_with("unknown.safetensors", "bogus", xt::xarray<double>{1.0});
        expect_rejected(dir, grad_args(c, state, bad, out), out, {"'bogus'"});
    }
    BOOST_TEST_CONTEXT("c0 for a GRU") {
        json gru = c;
        gru["cell"] = "gru";
        expect_rejected(dir, grad_args(gru, state, inputs, out), out, {"'c0'"});
    }
    BOOST_TEST_CONTEXT("an unknown path") {
        auto args = grad_args(c, state, inputs, out);
        args.insert(args.end(), {"--path", "both"});
        const Run run = run_cli(dir, args);
        BOOST_TEST(run.exit_code == 2);
        BOOST_TEST(run.err.find("--path") != std::string::npos, run.err);
        BOOST_TEST(read_bytes(out) == "an earlier result that a failed run must not touch\n");
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---- hostile sizes and values (issue 13) ----

BOOST_AUTO_TEST_SUITE(cli_hardening)

// A fixture case with its STATE and INPUTS files.
struct Fixture {
    json c;
    fs::path state, inputs;
};

Fixture fixture(const std::string& name) {
    return {find_case(name), fixtures / name / "state.safetensors", fixtures / name / "inputs.safetensors"};
}

// A size option beyond its bound: exit code 2 and one short line naming the option and the bound.
void expect_option_refused(const std::vector<std::string>& args, const std::string& option, const std::string& says) {
    TempDir dir;
    const Run run = run_cli(dir, args);
    BOOST_TEST(run.exit_code == 2, "exit " << run.exit_code << ", stderr: " << run.err);
    BOOST_TEST(std::count(run.err.begin(), run.err.end(), '\n') == 1, "stderr is not one line: " << run.err);
    BOOST_TEST(run.err.size() < 200u, "a long message: " << run.err);
    BOOST_TEST(run.err.find(option) != std::string::npos, run.err);
    BOOST_TEST(run.err.find(says) != std::string::npos, run.err);
}

BOOST_AUTO_TEST_CASE(sizes_whose_product_overflows_are_refused_by_the_option_bounds) {
    const std::string huge = "4611686018427387904";  // 2^62: T * B * I wrapped to 0 before
    expect_option_refused({"gradcheck", "--cell", "rnn_tanh", "--input-size", "4", "--hidden-size", "1", "--seq-len", huge,
                           "--batch", "1", "--zero-initial-state", "--path", "fused"},
                          "--seq-len", "must be a whole number from 1 to 1048576, got '" + huge + "'");
    expect_option_refused({"bench", "--cell", "lstm", "--seq-len", huge, "--batch", "1", "--input-size", "4",
                           "--hidden-size", "4", "--no-generic"},
                          "--seq-len", "from 1 to 1048576");
}

BOOST_AUTO_TEST_CASE(sizes_within_the_bounds_too_large_together_are_refused_where_the_tensor_is_made) {
    TempDir dir;
    const Run run = run_cli(dir, {"gradcheck", "--cell", "rnn_tanh", "--input-size", "1048576", "--hidden-size", "1",
                                  "--seq-len", "1048576", "--batch", "1048576", "--zero-initial-state", "--path", "fused"});
    BOOST_TEST(run.exit_code == 1, "exit " << run.exit_code << ", stderr: " << run.err);
    BOOST_TEST(run.err.find("rewind gradcheck: ") == 0, run.err);
    BOOST_TEST(run.err.find("[1048576, 1048576, 1048576] is too large") != std::string::npos, run.err);
}

BOOST_AUTO_TEST_CASE(nan_tolerances_a_negative_seed_and_zero_sizes_are_refused_in_one_short_line) {
    const std::vector<std::string> base{"gradcheck", "--cell", "gru", "--input-size", "2", "--hidden-size", "2",
                                        "--seq-len", "2", "--batch", "1"};
    auto with = [&](std::initializer_list<std::string> extra) {
        auto args = base;
        args.insert(args.end(), extra);
        return args;
    };
    expect_option_refused(with({"--eps", "nan"}), "--eps", "must be a finite number > 0, got 'nan'");
    expect_option_refused(with({"--eps", "0"}), "--eps", "> 0");
    expect_option_refused(with({"--atol", "nan"}), "--atol", "must be a finite number >= 0, got 'nan'");
    expect_option_refused(with({"--rtol", "-inf"}), "--rtol", "finite number >= 0");
    expect_option_refused(with({"--seed", "-1"}), "--seed", "must be a whole number >= 0, got '-1'");
    expect_option_refused(with({"--layers", "0"}), "--layers", "from 1 to 1024, got '0'");
    expect_option_refused(with({"--threads", "1e3"}), "--threads", "got '1e3'");
}

BOOST_AUTO_TEST_CASE(grad_checks_the_layers_against_the_state_file_before_building_them) {
    const Fixture f = fixture("lstm_l1_f64");
    TempDir dir;
    const fs::path out = dir / "out.safetensors";
    auto args = grad_args(f.c, f.state, f.inputs, out);
    args[std::find(args.begin(), args.end(), "--layers") - args.begin() + 1] = "1024";
    args.push_back("--bidirectional");
    // Inputs are checked first: make their state shapes fit, so the STATE check is what fails.
    auto inputs = rw::nn::load_safetensors(f.inputs);
    const auto x = rw::nn::shape_of(inputs.at("x"));
    inputs.insert_or_assign("grad_output", xt::xarray<double>(xt::zeros<double>({x[0], x[1], std::size_t(10)})));
    inputs.insert_or_assign("grad_h_n", xt::xarray<double>(xt::zeros<double>({std::size_t(2048), x[1], std::size_t(5)})));
    rw::nn::save_safetensors(dir / "inputs.safetensors", inputs);
    args[std::find(args.begin(), args.end(), "--inputs") - args.begin() + 1] = (dir / "inputs.safetensors").string();
    expect_rejected(dir, args, out, {"state.safetensors", "no tensor 'weight_ih_l0_reverse'", "--layers 1024 --bidirectional"});
}

BOOST_AUTO_TEST_CASE(grad_names_an_input_holding_nan_and_refuses_it_with_check_finite) {
    const Fixture f = fixture("lstm_l1_f64");
    TempDir dir;
    const fs::path out = dir / "out.safetensors";
    auto inputs = rw::nn::load_safetensors(f.inputs);
    std::get<xt::xarray<double>>(inputs.at("x")).data()[5] = NAN;
    rw::nn::save_safetensors(dir / "inputs.safetensors", inputs);
    auto args = grad_args(f.c, f.state, dir / "inputs.safetensors", out);

    const Run warned = run_cli(dir, args);
    BOOST_TEST(warned.exit_code == 0, warned.err);
    BOOST_TEST(warned.err.find("rewind grad: warning: ") == 0, warned.err);
    BOOST_TEST(warned.err.find("tensor 'x' holds 1 NaN and 0 Inf (first at flat index 5)") != std::string::npos, warned.err);
    BOOST_TEST(std::count(warned.err.begin(), warned.err.end(), '\n') == 1, warned.err);
    BOOST_TEST(fs::exists(out));

    args.push_back("--check-finite");
    expect_rejected(dir, args, out, {"inputs.safetensors", "tensor 'x' holds 1 NaN", "--check-finite"});
}

BOOST_AUTO_TEST_CASE(grad_replacing_out_keeps_its_mode) {
    const Fixture f = fixture("lstm_l1_f64");
    TempDir dir;
    const fs::path out = dir / "out.safetensors";
    write_bytes(out, "old");
    fs::permissions(out, fs::perms::owner_read | fs::perms::owner_write);
    const Run run = run_cli(dir, grad_args(f.c, f.state, f.inputs, out));
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    BOOST_TEST((fs::status(out).permissions() == (fs::perms::owner_read | fs::perms::owner_write)));
}

BOOST_AUTO_TEST_SUITE_END()
