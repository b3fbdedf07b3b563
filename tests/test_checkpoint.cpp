// Training: checkpoints (nn/src/train/checkpoint.cpp) and end-to-end learning of the reversal task.

#include <boost/test/unit_test.hpp>

#include "training_checks.hpp"

using namespace rw;
using namespace rw::nn;
using namespace rw::training_checks;
namespace tt = boost::test_tools;

BOOST_AUTO_TEST_SUITE(training)

// ---- checkpoints ----

BOOST_AUTO_TEST_CASE(resume_from_a_checkpoint_is_bit_exact) {
    const reverse::ModelOptions config{.embed = 8, .hidden = 12, .dropout = 0.2, .variational = 0.2};
    const std::size_t steps = 10, batch = 8;
    auto make = [&](std::uint64_t seed) { return make_reverser(config, seed); };
    auto adam_for = [](reverse::Model& model) {
        return std::make_unique<Adam<float>>(model.named_parameters(), AdamOptions{.lr = 0.01});
    };
    auto checkpoint_of = [](reverse::Model& model, Optimizer<float>& optimizer, Scheduler& scheduler, Generator& data) {
        Checkpoint<float> checkpoint(model);
        checkpoint.with(optimizer).with(scheduler).with("data", data);
        checkpoint.with("dropout", model.dropout->generator()).with("lstm", model.lstm->generator());
        return checkpoint;
    };

    auto straight = make(1);
    auto straight_adam = adam_for(*straight);
    CosineAnnealing straight_schedule(*straight_adam, steps);
    Generator straight_data(7);
    for (std::size_t i = 0; i < steps; ++i) {
        train_step(*straight, *straight_adam, straight_data, batch);
        straight_schedule.step();
    }

    const TempFile temp("resume.safetensors");
    const fs::path& file = temp.path;
    {
        auto first = make(1);
        auto adam = adam_for(*first);
        CosineAnnealing schedule(*adam, steps);
        Generator data(7);
        for (std::size_t i = 0; i < steps / 2; ++i) {
            train_step(*first, *adam, data, batch);
            schedule.step();
        }
        checkpoint_of(*first, *adam, schedule, data).save(file, {{"step", "5"}});
    }
    auto resumed = make(2);  // other weights and generators: everything must come from the file
    auto adam = adam_for(*resumed);
    CosineAnnealing schedule(*adam, steps);
    Generator data(3);
    const auto user = checkpoint_of(*resumed, *adam, schedule, data).load(file);
    BOOST_TEST(user.at("step") == "5");
    for (std::size_t i = steps / 2; i < steps; ++i) {
        train_step(*resumed, *adam, data, batch);
        schedule.step();
    }

    const auto expected = straight->named_parameters(), got = resumed->named_parameters();
    BOOST_REQUIRE(expected.size() == got.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const auto& a = expected[i].second.value();
        const auto& b = got[i].second.value();
        BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, expected[i].first << " differs");
    }
    BOOST_TEST(adam->lr() == straight_adam->lr());
}

BOOST_AUTO_TEST_CASE(a_failed_checkpoint_load_changes_nothing) {
    const reverse::ModelOptions config{.embed = 4, .hidden = 6};
    reverse::Model saved(reverse::Task{}, config, 1);
    Adam<float> adam(saved.named_parameters(), AdamOptions{.lr = 0.01});
    Generator data(1);
    train_step(saved, adam, data, 4);
    const TempFile temp("mismatch.safetensors");
    const fs::path& file = temp.path;
    Checkpoint<float>(saved).with(adam).save(file);

    // The model part of the file would load, the optimizer part (Adam into SGD) would not.
    reverse::Model target(reverse::Task{}, config, 2);
    SGD<float> sgd(target.named_parameters(), {.lr = 0.1, .momentum = 0.9});
    train_step(target, sgd, data, 4);
    const TensorMap weights_before = state_dict(target);
    const OptimizerState optimizer_before = sgd.state();
    BOOST_CHECK_THROW(Checkpoint<float>(target).with(sgd).load(file), SafetensorsError);
    // A generator the file does not hold: refused as well.
    Adam<float> other(target.named_parameters(), AdamOptions{.lr = 0.5});
    Generator extra(5);
    BOOST_CHECK_THROW(Checkpoint<float>(target).with(other).with("extra", extra).load(file), SafetensorsError);

    BOOST_CHECK(state_dict(target) == weights_before);
    BOOST_CHECK(sgd.state().tensors == optimizer_before.tensors);
    BOOST_TEST(other.lr() == 0.5);
    BOOST_TEST(other.state().tensors.empty());
}

// ---- learning: an LSTM learns to reverse sequences ----

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_sgd_momentum) {
    reverse::Model model(reverse::Task{}, {}, 11);
    SGD<float> sgd(model.named_parameters(), {.lr = 0.5, .momentum = 0.9});
    const Learned learned = learn_to_reverse(model, sgd, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_adam) {
    reverse::Model model(reverse::Task{}, {}, 12);
    Adam<float> adam(model.named_parameters(), AdamOptions{.lr = 0.01});
    const Learned learned = learn_to_reverse(model, adam, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_CASE(lstm_learns_to_reverse_with_adamw) {
    reverse::Model model(reverse::Task{}, {}, 13);
    AdamWOptions options;
    options.lr = 0.01;
    AdamW<float> adamw(model.named_parameters(), options);
    const Learned learned = learn_to_reverse(model, adamw, 0.01, 3000);
    BOOST_TEST(learned.loss < 0.01);
    BOOST_TEST(learned.accuracy > 0.99);
}

BOOST_AUTO_TEST_SUITE_END()
