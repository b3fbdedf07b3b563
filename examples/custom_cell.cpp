// A recurrent cell of your own in a few lines of ops: IndRNN (Li et al., 2018),
//     h' = relu(W_ih x + b + u * h),   u a vector: every unit sees only its own past.
// The cell writes one step; the layer machinery (Recurrent<T>) supplies stacking, both
// directions, variable lengths and initial states. It is checked against finite differences
// in float64 and trained on the adding problem, IndRNN's own benchmark.
//
//   build-dir/bin/custom_cell [--steps N] [--hidden H] [--max-length T] [--csv FILE] [--plot FILE.png]
//                             [--json] [--seed S] [--threads N]

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <rewind/autograd.hpp>
#include <rewind/nn/layers/cell.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/layers/init.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/layers/recurrent.hpp>

#include "adding_task.hpp"
#include "common.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

// A template, so the same cell trains in float and is gradient-checked in double.
template <class T>
class IndRNNCell : public RecurrentCell<T> {
public:
    IndRNNCell(std::size_t input_size, std::size_t hidden_size, Generator& generator)
        : RecurrentCell<T>(input_size, hidden_size) {
        const double bound = 1.0 / std::sqrt(double(input_size));
        weight_ih_ = this->register_parameter("weight_ih", Tensor<T>(init::uniform<T>({hidden_size, input_size}, -bound, bound, generator)));
        bias_ = this->register_parameter("bias", Tensor<T>(init::uniform<T>({hidden_size}, -bound, bound, generator)));
        // |u| <= 1 keeps relu's recurrence from blowing up; the paper draws u in [0, 1).
        weight_hh_ = this->register_parameter("weight_hh", Tensor<T>(init::uniform<T>({hidden_size}, 0.0, 1.0, generator)));
    }

    // The input projection does not depend on the state, so it is one GEMM over all steps
    // instead of one small GEMM per step; step() then receives row t of it.
    Tensor<T> prepare_input(const Tensor<T>& input) const override {
        const std::size_t steps = input.size(0), batch = input.size(1);
        const Tensor<T> flat = reshape(input, {steps * batch, this->input_size()});
        return reshape(gemm(flat, weight_ih_, false, true) + bias_, {steps, batch, this->hidden_size()});
    }

    State<T> step(const Tensor<T>& projected_x, const State<T>& state) const override {
        return {relu(projected_x + weight_hh_ * state[0])};  // u [H] broadcasts over the batch
    }

private:
    Tensor<T> weight_ih_, bias_, weight_hh_;
};

template <class T>
std::shared_ptr<Recurrent<T>> make_indrnn(const RecurrentOptions& options) {
    // The layer calls the factory once per layer and direction, with that layer's input size.
    return std::make_shared<Recurrent<T>>(
        [](std::size_t input_size, std::size_t hidden_size, Generator& generator) {
            return std::make_shared<IndRNNCell<T>>(input_size, hidden_size, generator);
        },
        options);
}

struct Model : Module<float> {
    Model(std::size_t hidden, std::uint64_t seed) {
        Generator init(seed);
        rnn = register_module("rnn", make_indrnn<float>({.input_size = 2, .hidden_size = hidden, .num_layers = 2,
                                                         .bidirectional = true, .seed = seed}));
        head = register_module("head", std::make_shared<Linear<float>>(2 * hidden, 1, init));
    }
    // The last layer's h_n of both directions: the forward one at each sequence's own end, the
    // reverse one after reading it back to its start.
    Tensor<float> predict(const adding::Batch& a) const {
        const Tensor<float> h_n = rnn->forward(a.x, {}, a.lengths).h_n();  // [L*D, B, H]
        const std::size_t batch = h_n.size(1), hidden = h_n.size(2);
        const Tensor<float> last = permute(slice(h_n, 0, 2, 4), {1, 0, 2});
        return head->forward(reshape(last, {batch, 2 * hidden}));
    }
    std::shared_ptr<Recurrent<float>> rnn;
    std::shared_ptr<Linear<float>> head;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"a user-written IndRNN cell: stacked, bidirectional, variable lengths, gradcheck, training"};
    examples::CommonOptions common;
    std::size_t steps = 800, hidden = 32, max_length = 30, batch = 32;
    double lr = 2e-3;
    bool json = false;
    examples::CurveOptions curve_options;
    examples::add_common_options(app, common);
    app.add_option("--steps", steps, "training steps")->capture_default_str();
    app.add_option("--hidden", hidden, "hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--max-length", max_length, "longest sequence (lengths vary from half of it)")
        ->check(CLI::Range(4, 10000))
        ->capture_default_str();
    app.add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    examples::add_curve_options(app, curve_options, "the held-out MSE curve");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);

    // ---- gradient check, float64: a mistake in step() would show up here ----
    auto tiny = make_indrnn<double>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                     .seed = common.seed});
    fmt::print("IndRNN layer's parameters, named by the layer:");
    for (const auto& [name, tensor] : tiny->named_parameters()) fmt::print(" {}{}", name, shape_string(tensor.shape()));
    Generator check_data(common.seed + 1);
    const std::vector<std::int64_t> lengths{5, 2, 4};
    fmt::print("\n\ngradcheck, 2 layers, bidirectional, lengths {{5, 2, 4}}, given h0:\n");
    const GradcheckReport report = examples::gradcheck_layer(*tiny, 5, lengths.size(), check_data, lengths);
    fmt::print("{}\n", report);

    // ---- training on the adding problem ----
    Model model(hidden, common.seed);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = lr});
    Generator data(common.seed + 2);
    const adding::Batch held_out = adding::random_batch(max_length / 2, max_length, 256, data);
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return double(mse_loss(model.predict(held_out), held_out.target).item());
    };
    fmt::print("adding problem, lengths {}..{}, held-out MSE (predicting the mean: 1/6 = {:.4f}):\n", max_length / 2,
               max_length, adding::kMeanBaselineMse);
    double mse = held_out_mse();
    fmt::print("  step {:4}  MSE {:.4f}\n", 0, mse);
    examples::Curve curve{{"step", "IndRNN", "always 1"}, {{0.0, mse, adding::kMeanBaselineMse}}};
    for (std::size_t step = 1; step <= steps; ++step) {
        const adding::Batch a = adding::random_batch(max_length / 2, max_length, batch, data);
        adam.zero_grad();
        mse_loss(model.predict(a), a.target).backward();
        clip_grad_norm(model.named_parameters(), 1.0);
        adam.step();
        // IndRNN's constraint |u| <= 1, applied after each update, outside the tape.
        for (auto& [name, tensor] : model.named_parameters())
            if (name.find("weight_hh") != std::string::npos) tensor.mutable_value() = xt::clip(tensor.value(), -1.0f, 1.0f);
        if (step % std::max<std::size_t>(1, steps / 20) == 0 || step == steps) {
            curve.add({double(step), mse = held_out_mse(), adding::kMeanBaselineMse});
            if (step % std::max<std::size_t>(1, steps / 5) == 0 || step == steps) fmt::print("  step {:4}  MSE {:.4f}\n", step, mse);
        }
    }
    examples::save_curve(curve_options, curve, {.title = "IndRNN on the adding problem: held-out MSE",
                                                .x_label = "training step", .y_label = "MSE", .log_y = true});
    examples::print_json(json, {{"gradcheck_passed", report.passed}, {"mse", mse}, {"baseline_mse", adding::kMeanBaselineMse}});
    return report.passed ? EXIT_SUCCESS : EXIT_FAILURE;
}
