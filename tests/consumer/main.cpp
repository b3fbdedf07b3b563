// Differentiates f(x, w) = sum(tanh(w * x) * x) with an installed rewind and checks the
// gradient against the closed form; then a user's fused cell (paths.cpp). Exits non-zero when
// anything is off.

#include <cmath>
#include <cstdio>

#include <rewind/autograd.hpp>
#include <rewind/dist/shard.hpp>

int check_user_cell();  // paths.cpp

int main() {
    using Array = xt::xarray<double>;
    rw::Tensor<double> x(Array{0.5, -1.0, 2.0}, true);
    rw::Tensor<double> w(Array{1.5, 0.25, -0.75}, true);
    rw::Tensor<double> f = rw::sum(rw::mul(rw::tanh(rw::mul(w, x)), x));
    f.backward();

    int failures = 0;
    for (std::size_t i = 0; i < 3; ++i) {
        const double xi = x.value()(i), wi = w.value()(i);
        const double t = std::tanh(wi * xi), d = 1 - t * t;
        const double dx = d * wi * xi + t, dw = d * xi * xi;
        if (std::abs(x.grad().value()(i) - dx) > 1e-12 || std::abs(w.grad().value()(i) - dw) > 1e-12) {
            std::fprintf(stderr, "consumer: wrong gradient at %zu\n", i);
            ++failures;
        }
    }
    auto report = rw::gradcheck(
        [](const std::vector<rw::Tensor<double>>& in) { return rw::sum(rw::mul(rw::tanh(rw::mul(in[1], in[0])), in[0])); },
        {x, w});
    if (!report.passed) {
        std::fprintf(stderr, "%s", report.to_string().c_str());
        ++failures;
    }
    // rewind::dist (and through it MPI) links: rank 1 of 3's part of a batch of 7 is [3, 5).
    const auto part = rw::dist::shard_of(7, 1, 3);
    if (part.begin != 3 || part.end != 5) {
        std::fprintf(stderr, "consumer: wrong shard [%zu, %zu)\n", part.begin, part.end);
        ++failures;
    }
    failures += check_user_cell();
    std::printf("consumer: f = %.6f, df/dx = [%.6f, %.6f, %.6f], %s\n", f.item(), x.grad().value()(0),
                x.grad().value()(1), x.grad().value()(2), failures ? "WRONG" : "ok");
    return failures ? 1 : 0;
}
