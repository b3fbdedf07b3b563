// IndRNN on the adding problem as Li et al. (2018) trained it, in their code's settings
// (IndRNN_Theano_Lasagne, adding/adding.py): two IndRNN layers of 128 relu units, W_ih from
// N(0, 0.001^2), u from U(0, 2^(1/T)) in the first layer and U(2^(-1/T), 2^(1/T)) in the last
// (examples/indrnn_cell.hpp, IndRNNInit::authors_adding), |u| <= 2^(1/T) enforced after every
// update (Optimizer::constrain), Adam at lr 2e-4, batch 32, a linear read-out of the last
// layer's final state. The paper's outcome: the MSE falls far below the 1/6 of always predicting
// the mean, at T = 1000 and beyond, where an LSTM stays at 1/6.
//
// Not the authors': their Lasagne layers clip each step's hidden gradient at 10 elementwise;
// here the whole gradient's norm is clipped at --clip (0: off). Training stops when the
// held-out MSE (--eval sequences, every --eval-every steps) is below --target-mse.
//
//   build-dir/bin/indrnn_adding [--length 1000] [--steps N] [--target-mse 0.01] [--init authors|default]
//                               [--no-constraint] [--json] [--seed S]

#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <rewind/nn.hpp>

#include "adding_task.hpp"
#include "common.hpp"
#include "indrnn_cell.hpp"

using namespace rw;
using namespace rw::nn;
namespace adding = examples::adding;

namespace {

struct Settings {
    std::size_t length = 1000, steps = 20000, hidden = 128, batch = 32, layers = 2, eval = 256, eval_every = 100;
    double lr = 2e-4, target_mse = 0.01, clip = 10.0, magnitude = 2.0;
    std::string init = "authors";
    bool constrain = true;
    std::uint64_t seed = 1;
};

struct Model : Module<float> {
    Model(const Settings& s) {
        const examples::IndRNNInit init =
            s.init == "authors" ? examples::IndRNNInit::authors_adding(s.length, s.magnitude) : examples::IndRNNInit{};
        rnn = register_module("rnn", std::make_shared<Recurrent<float>>(
                                         examples::indrnn_factory<float>(init),
                                         RecurrentOptions{.input_size = 2, .hidden_size = s.hidden, .num_layers = s.layers,
                                                          .seed = s.seed}));
        head = register_module("head", std::make_shared<Linear<float>>(
                                           LinearOptions{.in_features = s.hidden, .out_features = 1, .seed = s.seed + 7}));
    }
    Tensor<float> predict(const adding::Batch& a) const {
        const Tensor<float> h_n = rnn->forward(a.x).h_n();  // [L, B, H]
        return head->forward(rnn->state_of(h_n, rnn->options().num_layers - 1));
    }
    std::shared_ptr<Recurrent<float>> rnn;
    std::shared_ptr<Linear<float>> head;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"IndRNN (Li et al. 2018) on the adding problem, with the authors' initialisation and constraint"};
    examples::CommonOptions common;
    Settings s;
    bool json = false, no_constraint = false;
    examples::add_common_options(app, common);
    app.add_option("--length", s.length, "sequence length T")->check(CLI::Range(4, 100000))->capture_default_str();
    app.add_option("--steps", s.steps, "most training steps")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--target-mse", s.target_mse, "stop once the held-out MSE is below this")->capture_default_str();
    app.add_option("--hidden", s.hidden, "units per layer")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--layers", s.layers, "IndRNN layers")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", s.batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", s.lr, "Adam learning rate")->capture_default_str();
    app.add_option("--clip", s.clip, "clip the gradient norm at this (0: off)")->capture_default_str();
    app.add_option("--eval", s.eval, "held-out sequences")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--eval-every", s.eval_every, "steps between evaluations")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--init", s.init, "authors: the authors' adding-problem initialisation; default: the cell's")
        ->check(CLI::IsMember({"authors", "default"}))
        ->capture_default_str();
    app.add_option("--magnitude", s.magnitude, "the authors' MAG: |u| <= MAG^(1/T)")->capture_default_str();
    app.add_flag("--no-constraint", no_constraint, "do not clamp u after each update");
    examples::add_json_option(app, json);
    CLI11_PARSE(app, argc, argv);
    examples::apply(common);
    s.seed = common.seed;
    s.constrain = !no_constraint;

    Model model(s);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = s.lr});
    const double bound = std::pow(s.magnitude, 1.0 / double(s.length));
    if (s.constrain) adam.constrain("rnn.weight_hh_*", constraints::clamp<float>(-bound, bound));

    Generator data(s.seed + 1), test_data(s.seed + 1000);
    const adding::Batch held_out = adding::random_batch(s.length, s.length, s.eval, test_data);
    auto held_out_mse = [&] {
        NoGradGuard no_grad;
        return double(mse_loss(model.predict(held_out), held_out.target).item());
    };
    fmt::print("IndRNN adding problem, T = {}, {} layers of {}, batch {}, Adam lr {}, init {}, |u| <= {:.6f}{}; "
               "held-out MSE (always predicting 1: {:.4f})\n",
               s.length, s.layers, s.hidden, s.batch, s.lr, s.init, bound, s.constrain ? "" : " not enforced",
               adding::kMeanBaselineMse);
    const double initial = held_out_mse();
    fmt::print("  step {:6}  held-out MSE {:.4f}\n", 0, initial);
    double mse = initial, train_loss = 0;
    std::size_t step = 0, reached = 0;
    double training_seconds = 0, cpu_seconds = 0;
    for (step = 1; step <= s.steps; ++step) {
        const adding::Batch a = adding::random_batch(s.length, s.length, s.batch, data);
        const auto start = std::chrono::steady_clock::now();  // the step, not the data
        const std::clock_t cpu_start = std::clock();  // CPU time too: wall time on a shared machine says little
        adam.zero_grad();
        const Tensor<float> loss = mse_loss(model.predict(a), a.target);
        loss.backward();
        if (s.clip > 0) clip_grad_norm(model.named_parameters(), s.clip);
        adam.step();
        training_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        cpu_seconds += double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        train_loss = loss.item();
        if (!std::isfinite(train_loss)) {
            fmt::print("  step {:6}  training loss {} : diverged\n", step, train_loss);
            break;
        }
        if (step % s.eval_every == 0 || step == s.steps) {
            mse = held_out_mse();
            fmt::print("  step {:6}  training loss {:.4f}  held-out MSE {:.4f}  ({:.1f} ms/step)\n", step, train_loss, mse,
                       1e3 * training_seconds / double(step));
            std::fflush(stdout);
            if (mse < s.target_mse) {
                reached = step;
                break;
            }
        }
    }
    step = std::min(step, s.steps);
    double largest_u = 0;
    for (const auto& [name, parameter] : model.named_parameters())
        if (name.find("weight_hh") != std::string::npos) largest_u = std::max(largest_u, double(xt::amax(xt::abs(parameter.value()))()));
    if (reached) fmt::print("held-out MSE {:.4f} < {} after {} steps", mse, s.target_mse, reached);
    else fmt::print("held-out MSE {:.4f} after {} steps (target {} not reached)", mse, step, s.target_mse);
    fmt::print(", {:.1f} s of training ({:.1f} ms/step; CPU {:.1f} ms/step); largest |u| {:.6f}\n", training_seconds,
               1e3 * training_seconds / double(step), 1e3 * cpu_seconds / double(step), largest_u);
    examples::print_json(json, {{"length", s.length},
                                {"initial_mse", initial},
                                {"mse", mse},
                                {"baseline_mse", adding::kMeanBaselineMse},
                                {"steps", step},
                                {"reached_target", reached != 0},
                                {"training_seconds", training_seconds},
                                {"ms_per_step", 1e3 * training_seconds / double(step)},
                                {"cpu_ms_per_step", 1e3 * cpu_seconds / double(step)},
                                {"largest_u", largest_u},
                                {"u_bound", bound}});
    return EXIT_SUCCESS;
}
