#include "rewind/nn/analysis/curves.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

namespace rw::nn {

namespace {

// gnuplot strings are single-quoted; a quote inside is written twice.
std::string quoted(const std::string& text) {
    std::string result = "'";
    for (char c : text) result += c == '\'' ? std::string("''") : std::string(1, c);
    return result + "'";
}

}  // namespace

void write_csv(const std::string& path, const Curve& curve) {
    const std::string temporary = path + ".tmp";
    {
        std::ofstream out(temporary);
        for (std::size_t i = 0; i < curve.columns.size(); ++i) out << (i ? "," : "") << curve.columns[i];
        out << '\n';
        for (const auto& row : curve.rows) {
            for (std::size_t i = 0; i < row.size(); ++i)
                out << (i ? "," : "") << (std::isfinite(row[i]) ? fmt::format("{:.8g}", row[i]) : std::string("NaN"));
            out << '\n';
        }
        out.flush();
        if (!out) {
            std::error_code ignored;
            std::filesystem::remove(temporary, ignored);
            throw std::runtime_error(fmt::format("cannot write the CSV file '{}'", path));
        }
    }
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) throw std::runtime_error(fmt::format("cannot write the CSV file '{}': {}", path, error.message()));
}

void plot_png(const std::string& png, const std::string& csv, std::size_t columns, const PlotStyle& style) {
    if (std::system("command -v gnuplot > /dev/null 2>&1") != 0)
        throw std::runtime_error(fmt::format("cannot draw '{}': gnuplot is not installed (the data is in '{}')", png, csv));
    // The script goes to gnuplot's standard input, so no text passes through a shell.
    FILE* gnuplot = popen("gnuplot", "w");
    if (!gnuplot) throw std::runtime_error(fmt::format("cannot draw '{}': gnuplot does not start", png));
    const std::string script = fmt::format(
        "set terminal pngcairo size 900,560 noenhanced\nset output {}\nset datafile separator ','\n"
        // A missing value is skipped and the line runs on to the next point (a NaN would break it).
        "set datafile missing 'NaN'\nset key outside right\n"
        "set title {}\nset xlabel {}\nset ylabel {}\n{}"
        "plot for [i=2:{}] {} using 1:i with lines linewidth 2 title columnheader(i)\n",
        quoted(png), quoted(style.title), quoted(style.x_label), quoted(style.y_label),
        style.log_y ? "set logscale y\nset format y '1e%L'\n" : "", columns, quoted(csv));
    std::fputs(script.c_str(), gnuplot);
    if (pclose(gnuplot) != 0 || !std::filesystem::exists(png))
        throw std::runtime_error(fmt::format("gnuplot failed to draw '{}' (the data is in '{}')", png, csv));
}

}  // namespace rw::nn
