#pragma once
// Curves as users see them: columns of numbers over a shared x column, written as CSV and, on
// request, drawn into a PNG by gnuplot. Used by `rewind flow` and the examples.

#include <cstddef>
#include <string>
#include <vector>

namespace rw::nn {

// NaN marks a missing value (written as "NaN", which gnuplot skips).
struct Curve {
    std::vector<std::string> columns;  // x first
    std::vector<std::vector<double>> rows;
    void add(std::vector<double> row) { rows.push_back(std::move(row)); }
};

struct PlotStyle {
    std::string title, x_label, y_label;
    bool log_y = false;
};

// Atomically (a temporary file renamed over `path`); throws std::runtime_error naming the file.
void write_csv(const std::string& path, const Curve& curve);

// Draws columns 2..`columns` of the CSV against its first, one line each titled by its header,
// with gnuplot's pngcairo terminal. Throws std::runtime_error saying why when gnuplot is not
// installed (scripts/install-deps installs gnuplot-nox) or fails.
void plot_png(const std::string& png, const std::string& csv, std::size_t columns, const PlotStyle& style);

}  // namespace rw::nn
