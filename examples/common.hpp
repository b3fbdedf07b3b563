#pragma once
// The few helpers every example shares: the common command-line options, random arrays, a
// gradient check of a whole recurrent layer, progress lines, curves written as CSV and drawn by
// gnuplot, and the --json summary the tests read. Public API only, like the examples themselves.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn/analysis/curves.hpp>
#include <rewind/nn/layers/layer_check.hpp>
#include <rewind/nn/layers/recurrent.hpp>

namespace examples {

struct CommonOptions {
    std::uint64_t seed = 1;
    int threads = 1;
};

inline void add_common_options(CLI::App& app, CommonOptions& options) {
    app.add_option("--seed", options.seed, "seed of initialisation and data")->capture_default_str();
    app.add_option("--threads", options.threads, "GEMM threads (small recurrent GEMMs are fastest on one)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
}

// Called after parsing: rewind's GEMMs stay single-threaded unless asked.
inline void apply(const CommonOptions& options) { rw::blas::set_num_threads(options.threads); }

template <class T>
xt::xarray<T> uniform_array(const rw::Shape& shape, rw::Generator& generator, double scale = 1.0) {
    xt::xarray<T> value = xt::xarray<T>::from_shape(shape);
    for (auto& v : value) v = T(generator.uniform(-scale, scale));
    return value;
}

template <class T>
double max_abs_difference(const xt::xarray<T>& a, const xt::xarray<T>& b) {
    return double(xt::amax(xt::abs(a - b))());
}

// Checks every gradient of a recurrent layer in float64 against central differences
// (rw::nn::gradcheck_layer) on random data: the parameters, the input and (optionally) a given
// initial state.
inline rw::GradcheckReport gradcheck_layer(rw::nn::Recurrent<double>& layer, std::size_t steps, std::size_t batch,
                                           rw::Generator& generator,
                                           const std::optional<std::vector<std::int64_t>>& lengths = std::nullopt,
                                           bool given_initial_state = true) {
    const auto& options = layer.options();
    const rw::Tensor<double> x(uniform_array<double>({steps, batch, options.input_size}, generator), true);
    std::vector<rw::Tensor<double>> initial;
    if (given_initial_state)
        for (std::size_t s = 0; s < layer.state_names().size(); ++s) {
            const rw::Shape shape{options.num_layers * layer.num_directions(), batch, layer.state_size(s)};
            initial.emplace_back(uniform_array<double>(shape, generator, 0.5), true);
        }
    return rw::nn::gradcheck_layer(layer, x, initial, lengths);
}

// The index of the largest entry of a row (e.g. the predicted class of a row of logits).
template <class Row>
std::int64_t arg_max(const Row& row) {
    return std::int64_t(std::max_element(row.begin(), row.end()) - row.begin());
}

// Arg-max accuracy of logits [T, B, C] against targets [T, B] over the positions the mask
// [T, B] selects (weighted by it).
inline double masked_accuracy(const xt::xarray<float>& logits, const xt::xarray<std::int64_t>& targets,
                              const xt::xarray<float>& mask) {
    double right = 0, total = 0;
    for (std::size_t t = 0; t < logits.shape(0); ++t)
        for (std::size_t b = 0; b < logits.shape(1); ++b) {
            right += mask(t, b) * double(arg_max(xt::view(logits, t, b, xt::all())) == targets(t, b));
            total += mask(t, b);
        }
    return right / total;
}

// ---- progress of a long run ----
// A line "label  done/total (pct)  rate/s  ETA" at most every `interval` seconds, and one at the
// end; the caller's detail (e.g. the current loss) is computed only when a line is printed.
class Progress {
public:
    Progress(std::string label, std::size_t total, double interval_seconds = 2.0)
        : label_(std::move(label)), total_(total), interval_(interval_seconds), start_(Clock::now()), last_(start_) {}

    template <class Detail>
    void update(std::size_t done, Detail&& detail) {
        const auto now = Clock::now();
        if (done < total_ && seconds(last_, now) < interval_) return;
        last_ = now;
        const double elapsed = seconds(start_, now), rate = elapsed > 0 ? double(done) / elapsed : 0.0;
        const double eta = rate > 0 ? double(total_ - done) / rate : 0.0;
        fmt::print("  {} {}/{} ({:3.0f}%)  {:.1f}/s  ETA {:.0f}s  {}\n", label_, done, total_,
                   100.0 * double(done) / double(total_), rate, eta, detail());
        std::fflush(stdout);
    }
    void update(std::size_t done) {
        update(done, [] { return std::string(); });
    }

private:
    using Clock = std::chrono::steady_clock;
    static double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
    std::string label_;
    std::size_t total_;
    double interval_;
    Clock::time_point start_, last_;
};

// ---- curves: CSV, and a PNG through gnuplot on request (rw::nn's curves.hpp) ----
using rw::nn::Curve;
using rw::nn::PlotStyle;

struct CurveOptions {
    std::string csv, png;
};

inline void add_curve_options(CLI::App& app, CurveOptions& options, const std::string& what) {
    app.add_option("--csv", options.csv, "write " + what + " to this CSV file");
    app.add_option("--plot", options.png, "draw " + what + " into this PNG with gnuplot (CSV beside it unless --csv)");
}

// What --csv and --plot ask for: the CSV (beside the PNG when only --plot is given) and the PNG.
inline void save_curve(const CurveOptions& options, const Curve& curve, const PlotStyle& style) {
    std::string csv = options.csv;
    if (csv.empty() && !options.png.empty()) csv = options.png.substr(0, options.png.rfind('.')) + ".csv";
    if (csv.empty()) return;
    try {
        rw::nn::write_csv(csv, curve);
        fmt::print("{} written to {}\n", style.title, csv);
        if (options.png.empty()) return;
        rw::nn::plot_png(options.png, csv, curve.columns.size(), style);
        fmt::print("plot written to {}\n", options.png);
    } catch (const std::runtime_error& e) {
        fmt::print("{}\n", e.what());  // the run's results stand without the picture
    }
}

// ---- --json: the run's outcome as one JSON object, the last line of standard output ----
// The tests (tests/test_examples.cpp) read it and assert on the figures.
inline void add_json_option(CLI::App& app, bool& json) {
    app.add_flag("--json", json, "end with the outcome as one line of JSON");
}

inline void print_json(bool json, const nlohmann::json& summary) {
    if (json) fmt::print("{}\n", summary.dump());
}

}  // namespace examples
