// rewind bench --deepbench: the RNN shapes of Baidu's DeepBench (baidu-research/DeepBench,
// code/kernels/rnn_problems.h: training_set and inference_server_set) that fit a small machine in
// minutes, on rewind's fused path and on oneDNN's RNN primitives, medians of alternating rounds.
//
// DeepBench's layers are one layer of H units on inputs of H features. Its "vanilla" cell runs
// here as the tanh RNN. A training round is a forward, the loss sum(output) and the whole
// backward (dx and every weight gradient) on both sides; an inference round is one forward, under
// NoGradGuard for rewind and with oneDNN's forward_inference primitive (weights reordered once).
// FLOPs: the forward's GEMMs, 2 * T * B * G * H * (I + H) (G = 4 LSTM, 3 GRU, 1 RNN), three
// times that in training.

#include "deepbench.hpp"

#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <rewind/autograd/function.hpp>
#include <rewind/autograd/ops.hpp>
#include <rewind/autograd/random.hpp>
#include <rewind/nn/analysis/curves.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/fused/cell_rules.hpp>
#include <rewind/nn/layers/cell_table.hpp>

#include "commands.hpp"
#include "fma_peak.hpp"
#include "onednn_peer.hpp"

namespace rw::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
    std::size_t hidden, batch, steps;
    const char* type;  // DeepBench's name
};

// training_set's LSTM H=512/1024 at B<=64, LSTM H=256, vanilla H=1760 at B<=32 and GRU H=512 T=1;
// inference_server_set's LSTM H=256/512/1024 and GRU H=512 T=1. The rest (H>=1536, B=128, GRUs
// of 187..1500 steps) needs more memory or minutes than this runs in.
const std::vector<Shape> training_shapes = {
    {512, 16, 25, "lstm"},   {512, 32, 25, "lstm"},     {512, 64, 25, "lstm"},     {1024, 16, 25, "lstm"},
    {1024, 32, 25, "lstm"},  {1024, 64, 25, "lstm"},    {256, 16, 150, "lstm"},    {256, 32, 150, "lstm"},
    {256, 64, 150, "lstm"},  {1760, 16, 50, "vanilla"}, {1760, 32, 50, "vanilla"}, {512, 32, 1, "gru"}};
const std::vector<Shape> inference_shapes = {
    {512, 1, 25, "lstm"},  {512, 2, 25, "lstm"},  {512, 4, 25, "lstm"},   {1024, 1, 25, "lstm"}, {1024, 2, 25, "lstm"},
    {1024, 4, 25, "lstm"}, {256, 1, 150, "lstm"}, {256, 2, 150, "lstm"},  {256, 4, 150, "lstm"}, {512, 1, 1, "gru"},
    {512, 2, 1, "gru"},    {512, 3, 1, "gru"},    {512, 4, 1, "gru"}};
const std::vector<Shape> quick_training = {{512, 32, 1, "gru"}, {512, 16, 25, "lstm"}};
const std::vector<Shape> quick_inference = {{512, 1, 1, "gru"}, {256, 1, 150, "lstm"}};

std::string cell_of(const std::string& type) { return type == "vanilla" ? "rnn_tanh" : type; }

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// One shape: both sides built on the same weights and input, checked to compute the same output,
// then timed in alternating rounds.
nlohmann::json run_shape(const Shape& shape, const DeepbenchRequest& r) {
    const bool training = r.kind == "training";
    const std::string cell = cell_of(shape.type);
    const std::size_t H = shape.hidden, B = shape.batch, T = shape.steps, G = nn::cell_info(cell).gates;
    nn::RecurrentOptions options{.input_size = H, .hidden_size = H, .path = nn::ExecutionPath::fused, .seed = 1};
    auto layer = nn::make_recurrent<float>(cell, options);
    Generator generator(2);
    xt::xarray<float> values = checked_array<float>("deepbench input", {T, B, H});
    for (auto& v : values) v = static_cast<float>(generator.uniform(-1, 1));
    const Tensor<float> x(std::move(values), training);
    OnednnRnnStep peer(*layer, T, B, !training);
    peer.set_input(x.value().data());

    auto rewind_round = [&]() -> std::pair<double, Tensor<float>> {
        const auto start = Clock::now();
        if (!training) {
            NoGradGuard guard;
            auto output = layer->forward(x).output;
            return {ms_since(start), output};
        }
        layer->zero_grad();
        auto output = layer->forward(x).output;
        sum(output).backward();
        return {ms_since(start), output};
    };
    // The untimed round doubles as the check that both sides compute the same layer, and measures
    // the fused driver's buffers at their peak (inference keeps no step buffers: Note [Inference]).
    nn::fused::reset_driver_memory_peak();
    const std::size_t live = nn::fused::driver_memory().live;
    const Tensor<float> output = rewind_round().second;
    const std::size_t driver_peak = nn::fused::driver_memory().peak - live;
    peer.run();
    double difference = 0;
    for (std::size_t i = 0; i < output.size(); ++i)
        difference = std::max(difference, double(std::abs(output.value().data()[i] - peer.output()[i])));
    if (!layer->uses_fused()) throw std::runtime_error(fmt::format("deepbench: {} did not run fused: {}", cell, layer->path_note()));

    // Inferring, the same forward recorded on the tape (graph dropped at once) is timed too: what
    // no_grad saves against it.
    auto recorded_round = [&] {
        const auto start = Clock::now();
        { auto graph = layer->forward(x).output; }
        return ms_since(start);
    };
    std::vector<double> rewind_ms, onednn_ms, recorded_ms;
    for (int round = 0; round < r.rounds; ++round) {
        // Alternating which side goes first, so neither always runs on the other's warm caches.
        if (round % 2 == 0) rewind_ms.push_back(rewind_round().first);
        onednn_ms.push_back(peer.run().first);
        if (round % 2 == 1) rewind_ms.push_back(rewind_round().first);
        if (!training) recorded_ms.push_back(recorded_round());
    }
    const double flops = (training ? 3.0 : 1.0) * 2.0 * double(T * B * G * H) * double(2 * H);
    remeasure_fma_peak_gflops(r.threads);
    const double rewind = nn::median_of(rewind_ms), onednn = nn::median_of(onednn_ms);
    nlohmann::json row = {{"hidden", H},
            {"batch", B},
            {"time_steps", T},
            {"type", shape.type},
            {"cell", cell},
            {"rewind_ms", rewind},
            {"rewind_gflops", flops / (rewind * 1e6)},
            {"onednn_ms", onednn},
            {"onednn_gflops", flops / (onednn * 1e6)},
            {"onednn_over_rewind", onednn / rewind},
            {"output_max_abs_diff", difference},
            {"rewind_driver_peak_bytes", driver_peak},
            {"rounds", r.rounds}};
    if (!training) {
        row["rewind_recorded_forward_ms"] = nn::median_of(recorded_ms);
        row["recorded_over_no_grad"] = nn::median_of(recorded_ms) / rewind;
    }
    return row;
}

void print_row(const nlohmann::json& j) {
    fmt::print("{:>6} {:>5} {:>10} {:>8} | {:>9.3f} {:>8.1f} {:>6.1f}% | {:>9.3f} {:>8.1f} {:>6.1f}% | {:>13.2f}\n",
               j["hidden"].get<std::size_t>(), j["batch"].get<std::size_t>(), j["time_steps"].get<std::size_t>(),
               j["type"].get<std::string>(), j["rewind_ms"].get<double>(), j["rewind_gflops"].get<double>(),
               100 * j["rewind_fraction_of_fma_peak"].get<double>(), j["onednn_ms"].get<double>(),
               j["onednn_gflops"].get<double>(), 100 * j["onednn_fraction_of_fma_peak"].get<double>(),
               j["onednn_over_rewind"].get<double>());
}

// GFLOP/s of both sides against the shape's row in the table.
void plot(const DeepbenchRequest& r, const std::vector<nlohmann::json>& rows) {
    const std::string csv = r.png.substr(0, r.png.rfind('.')) + ".csv";
    nn::Curve curve;
    curve.columns = {"shape", "rewind fused GFLOP/s", "oneDNN GFLOP/s"};
    for (std::size_t i = 0; i < rows.size(); ++i)
        curve.add({double(i + 1), rows[i]["rewind_gflops"].get<double>(), rows[i]["onednn_gflops"].get<double>()});
    nn::write_csv(csv, curve);
    nn::plot_png(r.png, csv, 3,
                 {.title = fmt::format("DeepBench RNN {} shapes, {} thread(s): rewind fused vs oneDNN", r.kind, r.threads),
                  .x_label = "shape (row of the table)",
                  .y_label = "GFLOP/s"});
    if (!r.json) fmt::print("plot written to {} (data in {})\n", r.png, csv);
}

}  // namespace

int run_deepbench(const DeepbenchRequest& r) {
    apply_threads(r.threads);
    const bool training = r.kind == "training";
    const auto& shapes = r.quick ? (training ? quick_training : quick_inference)
                                 : (training ? training_shapes : inference_shapes);
    std::vector<nlohmann::json> rows;
    for (const Shape& shape : shapes) rows.push_back(run_shape(shape, r));
    // The fractions against the best FMA rate measured over the run (one per shape, beside it).
    const double peak = remeasure_fma_peak_gflops(r.threads);
    for (auto& row : rows) {
        row["fma_peak_gflops"] = peak;
        row["rewind_fraction_of_fma_peak"] = row["rewind_gflops"].get<double>() / peak;
        row["onednn_fraction_of_fma_peak"] = row["onednn_gflops"].get<double>() / peak;
        if (r.json) std::cout << row.dump() << std::endl;
    }
    if (!r.json) {
        fmt::print("DeepBench RNN {} shapes, float32, {} thread(s), median of {} alternating round(s); FMA peak {:.1f} "
                   "GFLOP/s (the best measured in the run)\n",
                   r.kind, r.threads, r.rounds, peak);
        fmt::print("{:>6} {:>5} {:>10} {:>8} | {:>9} {:>8} {:>7} | {:>9} {:>8} {:>7} | {:>13}\n", "hidden", "batch",
                   "time steps", "type", "rewind ms", "GFLOP/s", "of peak", "oneDNN ms", "GFLOP/s", "of peak",
                   "oneDNN/rewind");
        for (const auto& row : rows) print_row(row);
    }
    if (!r.png.empty()) plot(r, rows);
    return 0;
}

}  // namespace rw::cli
