// A tiny recurrent network written directly with rewind's ops:
//     h_t = tanh(W h_{t-1} + U x_t + b),   loss = mean over t of |h_t - y_t|^2 / H
// unrolled over a few steps, differentiated with one backward(), then checked against
// central differences with gradcheck.

#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <rewind/autograd.hpp>

namespace {

using rw::Tensor;
using Array = xt::xarray<double>;

constexpr std::size_t kInput = 3, kHidden = 4, kSteps = 5;

Array random_array(const rw::Shape& shape, double scale, std::mt19937_64& engine) {
    std::normal_distribution<double> normal(0.0, scale);
    Array value = Array::from_shape(shape);
    for (double& v : value) v = normal(engine);
    return value;
}

// inputs: W [H, H], U [H, D], b [H, 1], h0 [H, 1]; xs and ys are constants.
Tensor<double> unrolled_loss(const std::vector<Tensor<double>>& params, const std::vector<Tensor<double>>& xs,
                             const std::vector<Tensor<double>>& ys) {
    const auto &W = params[0], &U = params[1], &b = params[2];
    Tensor<double> h = params[3];
    Tensor<double> loss;
    for (std::size_t t = 0; t < xs.size(); ++t) {
        h = rw::tanh(rw::matmul(W, h) + rw::matmul(U, xs[t]) + b);
        Tensor<double> error = h - ys[t];
        Tensor<double> step = rw::sum(error * error);
        loss = loss.defined() ? loss + step : step;
    }
    return loss / double(xs.size() * kHidden);
}

double norm(const Tensor<double>& t) { return std::sqrt(xt::sum(t.value() * t.value())()); }

}  // namespace

int main() {
    std::mt19937_64 engine(7);
    std::vector<Tensor<double>> params = {
        Tensor<double>(random_array({kHidden, kHidden}, 0.5, engine), true),
        Tensor<double>(random_array({kHidden, kInput}, 0.5, engine), true),
        Tensor<double>(random_array({kHidden, 1}, 0.1, engine), true),
        Tensor<double>(random_array({kHidden, 1}, 0.1, engine), true),
    };
    const std::vector<std::string> names = {"W (hidden-hidden)", "U (input-hidden)", "b (bias)", "h0 (initial state)"};
    std::vector<Tensor<double>> xs, ys;
    for (std::size_t t = 0; t < kSteps; ++t) {
        xs.emplace_back(random_array({kInput, 1}, 1.0, engine));
        ys.emplace_back(random_array({kHidden, 1}, 0.5, engine));
    }

    fmt::print("rewind demo: h_t = tanh(W h + U x + b), H = {}, D = {}, {} steps\n\n", kHidden, kInput, kSteps);
    Tensor<double> loss = unrolled_loss(params, xs, ys);
    fmt::print("loss            {:.6f}   (op that produced it: '{}')\n", loss.item(), loss.grad_fn()->name);
    loss.backward();
    for (std::size_t i = 0; i < params.size(); ++i)
        fmt::print("|dloss/d{:<20}| = {:.6f}   shape {}\n", names[i], norm(params[i].grad()),
                   rw::shape_string(params[i].shape()));

    // A few steps of gradient descent, to show the gradients point downhill.
    for (int step = 0; step < 3; ++step) {
        for (auto& p : params) {
            p.mutable_value() -= 0.5 * p.grad().value();
            p.zero_grad();
        }
        Tensor<double> next = unrolled_loss(params, xs, ys);
        next.backward();
        fmt::print("after SGD step {}: loss {:.6f}\n", step + 1, next.item());
    }

    fmt::print("\n");
    rw::GradcheckReport report = rw::gradcheck(
        [&](const std::vector<Tensor<double>>& in) { return unrolled_loss(in, xs, ys); }, params, {}, names);
    fmt::print("{}", report);
    return report.passed ? 0 : 1;
}
