// The README's code snippets, verbatim between the "README snippet" markers: each compiles and
// runs here, and a test checks that README.md still holds exactly this text, so neither can
// drift from the other.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <rewind/nn.hpp>

using namespace rw;

namespace {

// The lines between "// README snippet: <name>" and "// end of snippet" in this file, without
// the four spaces of indentation that the enclosing function adds.
std::string snippet(const std::string& name) {
    std::ifstream file(std::filesystem::path(REWIND_TESTS_DIR) / "readme_snippets.cpp");
    std::string line, text;
    bool inside = false;
    while (std::getline(file, line)) {
        if (line == "    // README snippet: " + name) inside = true;
        else if (inside && line == "    // end of snippet") return text;
        else if (inside) text += (line.starts_with("    ") ? line.substr(4) : line) + "\n";
    }
    BOOST_FAIL("no snippet named " << name);
    return {};
}

std::string readme() {
    std::ifstream file(std::filesystem::path(REWIND_TESTS_DIR) / ".." / "README.md");
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(readme_snippets)

BOOST_AUTO_TEST_CASE(every_snippet_here_is_in_the_readme_verbatim) {
    const std::string text = readme();
    BOOST_REQUIRE(!text.empty());
    for (const char* name : {"lstm", "greedy decoding", "projections", "an optimizer of your own", "per-layer cells",
                             "gradient penalty"})
        BOOST_TEST(text.find(snippet(name) + "```\n") != std::string::npos, "README snippet '" << name << "'");
}

// The README lists examples/mgu_cell.hpp's MGU class whole; the examples compile with -Werror in
// rewind's build, so the listing compiles warning-free too.
BOOST_AUTO_TEST_CASE(the_readme_mgu_listing_is_examples_mgu_cell_hpp_verbatim) {
    std::ifstream file(std::filesystem::path(REWIND_TESTS_DIR) / ".." / "examples" / "mgu_cell.hpp");
    std::stringstream source;
    source << file.rdbuf();
    const std::string text = source.str();
    const auto begin = text.find("template <class T>\nclass MGUCell");
    const auto end = text.find("\n};\n", begin);
    BOOST_REQUIRE(begin != std::string::npos && end != std::string::npos);
    BOOST_TEST(readme().find("```cpp\n" + text.substr(begin, end + 4 - begin) + "```\n") != std::string::npos);
}

// The README's option idioms, compiled here with -Wall -Wextra -Werror (tests/CMakeLists.txt):
// designated initialisers that name only some members must not warn (-Wmissing-field-initializers).
BOOST_AUTO_TEST_CASE(the_readmes_designated_initialiser_idioms_compile_warning_free) {
    [[maybe_unused]] auto bench = [](nn::Recurrent<float>& layer, const Tensor<float>& x) {
        return nn::bench_paths(layer, x, {.repeats = 10});
    };
    const Tensor<double> w = Tensor<double>::zeros({4, 3}), u = Tensor<double>::zeros({2, 2});
    const nn::fused::CellWeights<double> weights{.input_weight = w, .recurrent_weight = u};
    const nn::fused::CellLayout layout{.gates = 2, .recurrent = 1};
    const nn::FusedCheckOptions check{.steps = 3};
    BOOST_TEST(weights.units.empty());
    BOOST_TEST(!weights.gated_state_weight.defined());
    BOOST_TEST(layout.states == 1u);
    BOOST_TEST(check.batch == 3u);
}

BOOST_AUTO_TEST_CASE(the_lstm_snippet_runs_on_real_data) {
    // README snippet: lstm
    auto lstm = nn::make_lstm<double>({.input_size = 8, .hidden_size = 16, .num_layers = 2,
                                       .bidirectional = true, .dropout = 0.1, .seed = 42});
    Generator data(7);
    Tensor<double> x(nn::init::uniform<double>({12, 4, 8}, -1.0, 1.0, data), true);   // [T, B, I]
    std::vector<std::int64_t> lengths{12, 7, 9, 3};                                    // packed-sequence semantics
    auto result = lstm->forward(x, /*initial_state=*/{}, lengths);
    const Tensor<double>& output = result.output;   // [T, B, 2*16]: zeros past each sequence's end
    const Tensor<double> h_n = result.h_n();         // [L*D, B, H]: each sequence's state at its own last step
    const Tensor<double> c_n = result.c_n();
    const Tensor<double> h_last = lstm->state_of(h_n, 1, 1);   // [B, H]: layer 1, reverse direction (index 2*1 + 1)
    sum(output).backward();    // BPTT: gradients in lstm->parameter("weight_hh_l1_reverse").grad()
    // end of snippet
    BOOST_TEST(output.shape() == (Shape{12, 4, 32}));
    BOOST_TEST(c_n.shape() == h_n.shape());
    BOOST_TEST(h_last.shape() == (Shape{4, 16}));
    BOOST_TEST(std::isfinite(double(xt::sum(xt::abs(lstm->parameter("weight_hh_l1_reverse").grad().value()))())));
    BOOST_TEST(xt::all(xt::isfinite(x.value())));
}

BOOST_AUTO_TEST_CASE(the_gradient_penalty_snippet_runs_on_the_fused_path) {
    Generator data(8);
    Tensor<double> x(nn::init::uniform<double>({6, 2, 3}, -1.0, 1.0, data), true);
    // README snippet: gradient penalty
    auto lstm = nn::make_lstm<double>({.input_size = 3, .hidden_size = 8});
    Tensor<double> out = lstm->forward(x).output;
    Tensor<double> dx = grad<double>({sum(mul(out, out))}, {x}, {}, {.create_graph = true})[0];
    auto penalty_grads = grad<double>({sum(mul(dx, dx))}, lstm->parameters());  // d||dL/dx||^2 / dW, fused
    // end of snippet
    BOOST_TEST(lstm->uses_fused(), lstm->path_note());
    BOOST_TEST(dx.grad_fn()->name() == "fused_lstm_backward");
    BOOST_REQUIRE(penalty_grads.size() == lstm->parameters().size());
    for (const auto& g : penalty_grads) BOOST_TEST(xt::sum(xt::abs(g.value()))() > 0.0);
}

BOOST_AUTO_TEST_CASE(the_projections_snippet_has_the_shapes_it_states) {
    // README snippet: projections
    auto projected = nn::make_lstm<double>({.input_size = 8, .hidden_size = 16, .num_layers = 2,
                                            .bias = false, .proj_size = 4});  // h_n [2, B, 4], c_n [2, B, 16]
    // end of snippet
    const auto result = projected->forward(Tensor<double>::ones({5, 3, 8}));
    BOOST_TEST(result.h_n().shape() == (Shape{2, 3, 4}));
    BOOST_TEST(result.c_n().shape() == (Shape{2, 3, 16}));
    BOOST_TEST(projected->uses_fused(), projected->path_note());  // the README: "runs on the fused path too"
    BOOST_TEST(!projected->named_parameters().empty());
    for (const auto& [name, parameter] : projected->named_parameters()) BOOST_TEST(name.rfind("bias", 0) != 0, name);
}

BOOST_AUTO_TEST_CASE(the_greedy_decoding_snippet_decodes_max_length_tokens_per_sequence) {
    const std::size_t vocab = 7, batch = 3, max_length = 5;
    const std::int64_t start_token = 0;
    Generator init(11);
    nn::Embedding<float> embedding(vocab, 4, init);
    auto encoder = nn::make_gru<float>({.input_size = 4, .hidden_size = 6, .seed = 1});
    auto decoder = nn::make_gru<float>({.input_size = 4, .hidden_size = 6, .seed = 2});
    nn::Linear<float> head(6, vocab, init);
    const xt::xarray<std::int64_t> source{{1, 2, 3}, {4, 5, 6}};  // [T, B]

    // README snippet: greedy decoding
    NoGradGuard no_grad;
    auto state = encoder->forward(embedding.forward(source)).state;   // source [T, B] -> h_n [1, B, H]
    std::vector<std::int64_t> tokens(batch, start_token);              // [B]
    std::vector<std::vector<std::int64_t>> decoded;
    for (std::size_t t = 0; t < max_length; ++t) {
        auto step = decoder->step(embedding.forward(tokens), state);   // [B, E] -> output [B, H]
        auto next = argmax(head.forward(step.output), 1);               // logits [B, vocab] -> [B]
        tokens.assign(next.begin(), next.end());
        decoded.push_back(tokens);
        state = step.state;
    }
    // end of snippet
    BOOST_TEST(decoded.size() == max_length);
    for (const auto& row : decoded) {
        BOOST_TEST(row.size() == batch);
        for (auto token : row) BOOST_TEST((token >= 0 && token < std::int64_t(vocab)));
    }
}

BOOST_AUTO_TEST_CASE(the_optimizer_snippet_trains_saves_and_refuses_a_bad_option) {
    auto model = nn::make_gru<float>({.input_size = 3, .hidden_size = 4, .seed = 1});
    // README snippet: an optimizer of your own
    // Sign descent with momentum: m = beta m + (1 - beta) g;  p = p - lr sign(m).
    class SignMomentum : public nn::Optimizer<float> {
    public:
        SignMomentum(nn::NamedTensors<float> parameters, double lr, double beta = 0.9)
            : nn::Optimizer<float>(std::move(parameters), lr), beta_(beta) {
            hyperparameter("beta", beta_, nn::Allowed::between(0, 1, nn::Allowed::open_high));
        }
        std::string kind() const override { return "sign_momentum"; }

    protected:
        xt::xarray<float> update(const xt::xarray<float>& p, const xt::xarray<float>& g,
                                 ParameterState& state) const override {
            auto& m = state.buffer("momentum", p);  // zeros at the first step, saved by state()
            m = float(beta_) * m + float(1 - beta_) * g;
            return p - float(lr()) * xt::sign(m);
        }

    private:
        double beta_;
    };
    SignMomentum optimizer(model->named_parameters(), 1e-3);
    // end of snippet
    const Tensor<float> loss = sum(model->forward(Tensor<float>::ones({5, 2, 3})).output);
    loss.backward();
    const xt::xarray<float> before = model->parameter("weight_hh_l0").value();
    optimizer.step();
    // Every weight moved by lr (the sign of a nonzero gradient's first momentum), to float rounding.
    BOOST_TEST(xt::amax(xt::abs(model->parameter("weight_hh_l0").value() - before))() == 1e-3f, boost::test_tools::tolerance(1e-4f));
    // The checkpoint plumbing came for free: the state round-trips into a fresh optimizer.
    SignMomentum resumed(model->named_parameters(), 0.5, 0.5);
    resumed.load_state(optimizer.state(), "test");
    BOOST_CHECK(resumed.state().tensors == optimizer.state().tensors);
    BOOST_CHECK(resumed.state().scalars == optimizer.state().scalars);
    BOOST_TEST(resumed.hyperparameters().at("beta") == 0.9);
    BOOST_CHECK_EXCEPTION(SignMomentum(model->named_parameters(), 1e-3, 1.0), std::invalid_argument,
                          [](const std::invalid_argument& error) {
                              return std::string(error.what()) ==
                                     "sign_momentum: invalid option beta: expected a value in [0, 1), got 1";
                          });
}

BOOST_AUTO_TEST_CASE(the_per_layer_cells_snippet_sets_each_layers_forget_bias) {
    // README snippet: per-layer cells
    // Forget-gate bias 1 in the first layer, 3 in the last (a longer memory where the read-out is).
    nn::CellFactory<float> factory = [](const nn::CellSite& site, Generator& g) {
        const double forget_bias = site.last_layer() ? 3.0 : 1.0;
        return nn::cell_factory<float>("lstm", {.forget_bias = forget_bias})(site, g);
    };
    nn::Recurrent<float> lstm(factory, {.input_size = 8, .hidden_size = 16, .num_layers = 3, .seed = 1});
    // end of snippet
    nn::Recurrent<float> plain(nn::cell_factory<float>("lstm"), {.input_size = 8, .hidden_size = 16, .num_layers = 3, .seed = 1});
    // The forget gate's rows of bias_hh (block 1 of i, f, g, o) carry the added bias.
    for (std::size_t layer = 0; layer < 3; ++layer) {
        const std::string name = "bias_hh_l" + std::to_string(layer);
        const xt::xarray<float> added = lstm.parameter(name).value() - plain.parameter(name).value();
        BOOST_TEST(added(16) == (layer == 2 ? 1.5f : 0.5f), boost::test_tools::tolerance(1e-6f));  // half in each bias
        BOOST_TEST(added(0) == 0.0f);
    }
}

BOOST_AUTO_TEST_SUITE_END()
