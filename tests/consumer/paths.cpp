// A user's fused cell compiled here, in the consumer: the MGU of the installed example helpers
// (<rewind/examples/mgu_cell.hpp>), its rules checked against its step() and its fused path
// timed against the generic one, each in one call. Built with no CMAKE_BUILD_TYPE by
// install_consumer, it must still be optimised (Note [Consumer build type], rewindConfig.cmake)
// and the fused path must not be slower than the generic one.

#include <cstdio>

#include <rewind/examples/mgu_cell.hpp>
#include <rewind/nn/analysis/path_bench.hpp>
#include <rewind/nn/fused/check.hpp>

int check_user_cell() {
    int failures = 0;
#ifndef __OPTIMIZE__
    std::fprintf(stderr, "consumer: compiled without optimisation: a cell's fused rules would run slower than the "
                         "generic path (rewindConfig.cmake should have given -O3)\n");
    ++failures;
#endif
    const rw::nn::FusedCheckReport check = rw::nn::check_fused_cell(examples::mgu_factory<double>(), 3, 4);
    if (!check.passed) {
        std::fprintf(stderr, "consumer: check_fused_cell failed on the MGU:\n%s\n", check.to_string().c_str());
        ++failures;
    }
#ifdef CONSUMER_TIME_PATHS
    // Small sizes: cheap for every ctest run, and far apart either way (docs/bench.md, Note
    // [Consumer build type]): optimised, the fused path is several times faster than the generic
    // one; compiled without optimisation, xsimd's lane functions are calls and it is several times
    // slower.
    rw::nn::PathBenchOptions options;
    options.repeats = 9;
    options.warmup = 1;
    rw::nn::CellBenchSizes sizes;
    sizes.steps = 50;
    sizes.batch = 4;
    sizes.input = 32;
    sizes.hidden = 32;
    const rw::nn::PathBenchResult bench = rw::nn::bench_cell_paths<float>(examples::mgu_factory<float>(), sizes, options);
    std::printf("consumer: MGU, T=50, B=4, I=H=32, float32: %s\n", bench.to_string().c_str());
    if (!bench.fused_ran || !(bench.fused_median_ms <= bench.generic_median_ms)) {
        std::fprintf(stderr, "consumer: the fused path is slower than the generic path (or did not run)\n");
        ++failures;
    }
#endif
    return failures;
}
