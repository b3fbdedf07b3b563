// `rewind bench`, run as a user runs it: every path and the oneDNN peer in its JSON, DeepBench's
// shapes for training and inference, and a projected LSTM on both paths.

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace cli_test;

BOOST_AUTO_TEST_SUITE(cli_bench)

BOOST_AUTO_TEST_CASE(bench_json_reports_every_path_and_the_onednn_peer) {
    TempDir dir;
    for (const std::string cell : {"lstm", "gru", "rnn_tanh"}) {
        BOOST_TEST_CONTEXT(cell) {
            const Run run = run_cli(dir, {"bench", "--cell", cell, "--seq-len", "4", "--batch", "3", "--input-size", "5",
                                          "--hidden-size", "6", "--repeats", "3", "--peer", "onednn", "--json"});
            BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
            const json report = json::parse(run.out);
            for (const char* key : {"fused_ms", "generic_ms", "generic_over_fused", "fused_gflops", "sgemm_gflops",
                                    "fraction_of_sgemm_peak", "saved_bytes_per_step", "onednn_ms"})
                BOOST_TEST(report.contains(key), key << " missing from " << run.out);
            BOOST_TEST(report.at("fused_ms").get<double>() > 0);
            BOOST_TEST(report.at("fused_ran").get<bool>());
            // The peer computes the same layer: same output and input gradient up to float32 round-off.
            BOOST_TEST(report.at("onednn_output_max_abs_diff").get<double>() < 1e-4);
            BOOST_TEST(report.at("onednn_dx_max_abs_diff").get<double>() < 1e-4);
        }
    }
}

BOOST_AUTO_TEST_CASE(bench_deepbench_quick_prints_deepbenchs_columns_for_both_sides) {
    TempDir dir;
    const Run run = run_cli(dir, {"bench", "--deepbench", "training", "--quick"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    for (const char* column : {"hidden", "batch", "time steps", "type", "rewind ms", "oneDNN ms", "GFLOP/s", "of peak",
                               "oneDNN/rewind", "median of 1 alternating round"})
        BOOST_TEST(run.out.find(column) != std::string::npos, column << " missing from " << run.out);
    // DeepBench's GRU H=512 B=32 T=1 and LSTM H=512 B=16 T=25, one row each: 4 numbers, the type, 7 figures.
    std::size_t rows = 0;
    std::istringstream lines(run.out);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream words(line);
        std::string hidden, batch, steps, type;
        words >> hidden >> batch >> steps >> type;
        if (hidden != "512" || (type != "gru" && type != "lstm")) continue;
        ++rows;
        BOOST_TEST(line.find("nan") == std::string::npos, line);
        BOOST_TEST(std::count(line.begin(), line.end(), '|') == 3, line);
    }
    BOOST_TEST(rows == 2u, run.out);
}

BOOST_AUTO_TEST_CASE(bench_deepbench_inference_json_reports_both_sides_on_the_same_layer) {
    TempDir dir;
    const fs::path png = dir.path / "deepbench.png";
    const Run run = run_cli(dir, {"bench", "--deepbench", "inference", "--quick", "--json", "--plot", png.string()});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    std::size_t rows = 0;
    std::istringstream lines(run.out);
    for (std::string line; std::getline(lines, line); ++rows) {
        const json row = json::parse(line);
        for (const char* key : {"hidden", "batch", "time_steps", "type", "rewind_ms", "rewind_gflops",
                                "rewind_fraction_of_fma_peak", "onednn_ms", "onednn_gflops",
                                "onednn_fraction_of_fma_peak", "onednn_over_rewind", "output_max_abs_diff", "rounds",
                                "fma_peak_gflops", "rewind_recorded_forward_ms", "recorded_over_no_grad",
                                "rewind_driver_peak_bytes"})
            BOOST_TEST(row.contains(key), key << " missing from " << line);
        BOOST_TEST(row.at("rewind_ms").get<double>() > 0);
        BOOST_TEST(row.at("onednn_ms").get<double>() > 0);
        BOOST_TEST(row.at("rounds").get<int>() == 1);
        BOOST_TEST(row.at("batch").get<int>() == 1);  // inference_server_set's B=1 shapes
        BOOST_TEST(row.at("output_max_abs_diff").get<double>() < 1e-4, line);
    }
    BOOST_TEST(rows == 2u, run.out);
    BOOST_TEST(fs::exists(png));
}

BOOST_AUTO_TEST_CASE(bench_deepbench_options_are_refused_without_deepbench) {
    TempDir dir;
    const Run run = run_cli(dir, {"bench", "--quick"});
    BOOST_TEST(run.exit_code == 1);
    BOOST_TEST(run.err.find("--quick needs --deepbench") != std::string::npos, run.err);
}

BOOST_AUTO_TEST_CASE(bench_times_a_projected_lstm_on_both_paths) {
    TempDir dir;
    const Run run = run_cli(dir, {"bench", "--cell", "lstm", "--seq-len", "4", "--batch", "3", "--input-size", "5",
                                  "--hidden-size", "6", "--proj-size", "3", "--repeats", "2", "--peer", "onednn", "--json"});
    BOOST_TEST_REQUIRE(run.exit_code == 0, run.err);
    const json report = json::parse(run.out);
    BOOST_TEST(report.at("fused_ran").get<bool>(), run.out);
    BOOST_TEST(report.at("proj_size").get<int>() == 3);
    BOOST_TEST(report.at("generic_ms").get<double>() > 0);
    BOOST_TEST(report.at("saved_bytes_per_step").get<std::size_t>() == 3u * (24 + 3 + 6 + 6) * 4);  // gates, h, c, m
    BOOST_TEST(report.at("peer_note").get<std::string>().find("without projections") != std::string::npos, run.out);
}

BOOST_AUTO_TEST_SUITE_END()
