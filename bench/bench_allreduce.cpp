// The cost of GradientReducer::synchronize alone: gradients of a given size (copied into the
// buckets, all-reduced, averaged back), with a barrier before each call so that the time is the
// communication and not waiting for a rank that is behind. Run under mpirun:
//
//   mpirun -np 2 build/bin/bench_allreduce [--kib 356] [--bucket-kib 256] [--repeats 300]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <rewind/dist.hpp>

// A module of one parameter, just to have named parameters of the size asked.
struct Flat : rw::nn::Module<float> {
    explicit Flat(std::size_t n) { weight = register_parameter("weight", rw::Tensor<float>::ones({n})); }
    rw::Tensor<float> weight;
};

int main(int argc, char** argv) {
    rw::dist::Communicator comm(&argc, &argv);
    CLI::App app{"time GradientReducer::synchronize (all-reduce of the gradients) without rank skew"};
    double kib = 356, bucket_kib = 256;
    int repeats = 300;
    app.add_option("--kib", kib, "gradient size")->capture_default_str();
    app.add_option("--bucket-kib", bucket_kib, "bucket size")->capture_default_str();
    app.add_option("--repeats", repeats, "timed calls")->check(CLI::PositiveNumber)->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return comm.is_root() ? app.exit(e) : 1;
    }
    Flat model(std::size_t(kib * 1024 / sizeof(float)));
    rw::dist::GradientReducer<float> reducer(comm, model.named_parameters(),
                                             {.bucket_bytes = std::size_t(bucket_kib * 1024), .overlap = false});
    std::vector<double> times;
    for (int i = 0; i < repeats + 10; ++i) {
        model.weight.set_grad(rw::Tensor<float>::ones(model.weight.shape()));
        comm.barrier();
        const auto start = std::chrono::steady_clock::now();
        reducer.synchronize();
        if (i >= 10) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    if (comm.is_root())
        fmt::print("synchronize of {:.0f} KiB in {} bucket(s) on {} rank(s): min {:.1f} us, median {:.1f} us, p90 {:.1f} us\n",
                   kib, reducer.buckets().size(), comm.size(), times.front() * 1e6, times[times.size() / 2] * 1e6,
                   times[times.size() * 9 / 10] * 1e6);
}
