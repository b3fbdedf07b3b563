// The examples' outcomes, asserted: each example runs as a user runs it, with --json, and the
// figures of its summary (the last line of its output) are checked against what the example
// exists to show. Sizes are the examples' CI-sized defaults unless a case says otherwise; the
// thresholds leave a margin measured over several seeds (see each case).

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <string>

#include <boost/test/unit_test.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

using nlohmann::json;

namespace {

// Runs build/bin/<example> --json <arguments> and returns its summary.
json run_example(const std::string& example, const std::string& arguments = {}) {
    const std::string command = fmt::format("'{}/{}' --json {} 2>&1", REWIND_EXAMPLES_DIR, example, arguments);
    std::FILE* pipe = ::popen(command.c_str(), "r");
    BOOST_REQUIRE_MESSAGE(pipe, "cannot run " << command);
    std::string output;
    char buffer[4096];
    for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    const int status = ::pclose(pipe);
    BOOST_TEST_MESSAGE(command << "\n" << output);
    BOOST_REQUIRE_MESSAGE(WIFEXITED(status) && WEXITSTATUS(status) == 0, command << " failed:\n" << output);
    const auto end = output.find_last_not_of('\n');
    const auto begin = output.rfind('\n', end);
    const std::string last_line = output.substr(begin == std::string::npos ? 0 : begin + 1, end + 1);
    BOOST_TEST_INFO(output);
    BOOST_REQUIRE(!last_line.empty() && last_line.front() == '{');
    return json::parse(last_line);
}

}  // namespace

// 600 steps at T = 100: over seeds 1-4 the GRU ends at 0.0005-0.0011 and the tanh RNN at
// 0.162-0.199, so a threshold at 0.05 and at 0.12 are far from either.
BOOST_AUTO_TEST_CASE(adding_problem_gru_solves_t100_and_tanh_rnn_stays_at_the_baseline) {
    const json summary = run_example("adding_problem", "--cells rnn_tanh,gru");
    BOOST_TEST(summary.at("length").get<int>() == 100);
    BOOST_TEST(summary.at("mse").at("gru").get<double>() < 0.05);
    BOOST_TEST(summary.at("mse").at("rnn_tanh").get<double>() > 0.12);
}

// Paper replications (README "Paper replications"), each in a short mode of a few seconds; the
// full runs are the README's commands.

// The LSTM of Hochreiter & Schmidhuber (1997) / Le et al. (2015) at T = 50: the held-out MSE falls
// below 0.01 (6% of predicting 1) after 650-1100 steps over seeds 1-4 (1.5-3 s), from the plateau
// at 1/6.
BOOST_AUTO_TEST_CASE(adding_problem_lstm_solves_t50_after_its_plateau) {
    const json summary = run_example("adding_problem", "--cells lstm --length 50 --steps 2000 --target-mse 0.01 --evaluations 40");
    BOOST_TEST(summary.at("mse").at("lstm").get<double>() < 0.01);
    BOOST_TEST(summary.at("steps_taken").at("lstm").get<int>() < 2000);
}

// Arjovsky et al. (2016): the LSTM learns the memoryless strategy (blanks, then a uniform guess)
// and stays there. T = 50, 1000 RMSprop steps: 1.01 x the baseline 10 ln 8 / 70 (the GRU and the
// tanh RNN 1.00 x in the same run); after 400 steps it is still 1.33 x, coming down from ln 9.
BOOST_AUTO_TEST_CASE(copy_task_lstm_sits_at_the_memoryless_baseline) {
    const json summary = run_example("copy_task", "--length 50 --hidden 64 --steps 1000");
    const double baseline = summary.at("baseline").get<double>();
    BOOST_TEST(baseline == 10 * std::log(8.0) / 70, boost::test_tools::tolerance(1e-12));
    const double loss = summary.at("loss").at("lstm").get<double>();
    BOOST_TEST(loss < 1.1 * baseline);
    BOOST_TEST(loss > 0.9 * baseline);
}

// Li et al. (2018) at T = 50 (64 units, lr 2e-3 for a short run): below 0.01 after 500-1000 steps
// over seeds 1-5 (1-2 s), with u held at |u| <= 2^(1/50) = 1.01396 (the largest |u| reaches the bound).
BOOST_AUTO_TEST_CASE(indrnn_adding_with_the_authors_init_and_constraint_solves_t50) {
    const json summary =
        run_example("indrnn_adding", "--length 50 --hidden 64 --lr 2e-3 --steps 2000 --eval-every 100 --target-mse 0.01");
    BOOST_TEST(summary.at("reached_target").get<bool>());
    BOOST_TEST(summary.at("mse").get<double>() < 0.01);
    const double bound = summary.at("u_bound").get<double>();
    BOOST_TEST(bound == std::pow(2.0, 1.0 / 50), boost::test_tools::tolerance(1e-12));
    BOOST_TEST(summary.at("largest_u").get<double>() <= bound * (1 + 1e-6));
}

// The cell's default initialisation blows up at T = 1000: untrained held-out MSE 83, 373, 3.8
// over seeds 1-3 (its relu units sum ~1000 inputs), against the authors' 1.11, 1.09, 0.92; no
// training is needed to see it (one step, 64 held-out sequences).
BOOST_AUTO_TEST_CASE(indrnn_adding_default_init_starts_far_above_the_authors_at_t1000) {
    const std::string common = "--length 1000 --steps 1 --eval 64 --eval-every 1 --target-mse 0";
    const double authors = run_example("indrnn_adding", common).at("initial_mse").get<double>();
    const double fallback = run_example("indrnn_adding", common + " --init default").at("initial_mse").get<double>();
    BOOST_TEST(authors < 1.5);
    BOOST_TEST(fallback > 3 * authors);
}

// Seeds 1-4: every shape is far past its baseline (accuracies 0.91-1.0 against majority shares
// of 0.5-0.75 on the 32 held-out cases; MSE 0.0012-0.0025 against 0.49-0.51 for predicting 0).
BOOST_AUTO_TEST_CASE(sequence_shapes_each_shape_beats_its_own_baseline) {
    const json summary = run_example("sequence_shapes");
    for (const char* shape : {"one_to_one", "one_to_many", "many_to_one", "many_to_many"}) {
        BOOST_TEST_CONTEXT(shape) {
            const json& outcome = summary.at(shape);
            const double value = outcome.at("value"), baseline = outcome.at("baseline");
            if (outcome.at("metric") == "mse") BOOST_TEST(value < 0.1 * baseline);
            else BOOST_TEST(value > baseline + 0.15);
        }
    }
}

// Seeds 1-4 end at 14.8-15.6 against the unigram baseline's 24.8 (12 epochs, before overfitting
// sets in).
BOOST_AUTO_TEST_CASE(char_lm_validation_perplexity_ends_below_the_unigram_baseline) {
    const json summary = run_example("char_lm", "--sample 20");
    BOOST_TEST(summary.at("validation_perplexity").get<double>() < 0.8 * summary.at("unigram_perplexity").get<double>());
}

// Debian's fortunes file (23.6 kB): two epochs reach 7.9-8.3 over seeds 1-3, unigram 22.9.
BOOST_AUTO_TEST_CASE(char_lm_learns_debian_fortunes_well_below_the_unigram_baseline) {
    const json summary = run_example("char_lm", "--fortunes fortunes --epochs 2 --sample 20 --prompt 'A '");
    BOOST_TEST(summary.at("bytes").get<int>() > 10000);
    BOOST_TEST(summary.at("validation_perplexity").get<double>() < 0.5 * summary.at("unigram_perplexity").get<double>());
}

// The user-written IndRNN cell's fused rules agree with the tape step by step, the fused layer
// gradchecks, and 800 fused steps (lr 1e-3) end at 0.006-0.019 over seeds 1-4.
BOOST_AUTO_TEST_CASE(custom_cell_gradchecks_and_solves_the_adding_problem) {
    const json summary = run_example("custom_cell");
    BOOST_TEST(summary.at("gradcheck_passed").get<bool>());
    BOOST_TEST(summary.at("gradcheck_fused").get<bool>());
    BOOST_TEST(summary.at("check_fused_passed").get<bool>());
    BOOST_TEST(summary.at("fused_ran").get<bool>());
    BOOST_TEST(summary.at("mse").get<double>() < 0.05);
}

// The user-written MGU with hand-written fused rules: its rules agree with the tape step by step,
// the fused layer gradchecks, and 300 fused training steps end at 0.0017-0.0035 over seeds 1-4.
BOOST_AUTO_TEST_CASE(fused_mgu_checks_its_rules_trains_fused_and_is_timed) {
    const json summary = run_example("fused_mgu");
    BOOST_TEST(summary.at("check_passed").get<bool>());
    BOOST_TEST(summary.at("gradcheck_passed").get<bool>());
    BOOST_TEST(summary.at("gradcheck_fused").get<bool>());
    BOOST_TEST(summary.at("trained_fused").get<bool>());
    BOOST_TEST(summary.at("mse").get<double>() < 0.02);
    BOOST_TEST(summary.at("bench").size() == 2u);
    for (const auto& timing : summary.at("bench")) {
        BOOST_TEST(timing.at("fused_ran").get<bool>());
        BOOST_TEST(timing.at("generic_over_fused").get<double>() > 0);
    }
}

// The layer-normalised LSTM with fused rules that normalise over their row: its rules agree with
// the tape step by step, the fused layer gradchecks, 300 fused training steps end at 0.0018-0.0043
// over seeds 1-4 (predicting the mean: 0.167), and the small timings ran fused.
BOOST_AUTO_TEST_CASE(ln_lstm_checks_its_rules_trains_fused_and_is_timed) {
    const json summary = run_example("ln_lstm");
    BOOST_TEST(summary.at("check_passed").get<bool>());
    BOOST_TEST(summary.at("gradcheck_passed").get<bool>());
    BOOST_TEST(summary.at("gradcheck_fused").get<bool>());
    BOOST_TEST(summary.at("trained_fused").get<bool>());
    BOOST_TEST(summary.at("mse").get<double>() < 0.02);
    BOOST_TEST(summary.at("bench").at("wide").at("fused_ran").get<bool>());
    BOOST_TEST(summary.at("bench").at("single").at("fused_ran").get<bool>());
    BOOST_TEST(summary.at("bench").at("single").at("generic_over_fused").get<double>() > 0);
}

// Double backpropagation through the fused GRU (the input-gradient penalty needs the recurrent
// op's double backward): 400 steps at T = 20 with lambda = 0.1 end at MSE 0.0004-0.0010 over seeds
// 1-6 (predicting the mean: 0.167), and the penalty's mean over the run is 0.43-0.81 x that of the
// same run without it.
BOOST_AUTO_TEST_CASE(gradient_penalty_trains_through_the_fused_double_backward_and_lowers_the_penalty) {
    const json summary = run_example("gradient_penalty");
    BOOST_TEST(summary.at("path") == "fused");
    BOOST_TEST(summary.at("fused_ran").get<bool>());
    BOOST_TEST(summary.at("mse").get<double>() < 0.01);
    BOOST_TEST(summary.at("mean_penalty").get<double>() < 0.9 * summary.at("unpenalised_mean_penalty").get<double>());
}

// The top Hessian eigenvalue of a trained LSTM's loss (393 parameters) by power iteration on
// rw::hvp_leaves: 500 float64 training steps end at MSE 0.0018-0.0039 over seeds 1-4, the iteration
// converges in 4-6 products (eigenvalue 47-67, residual ||H v - lambda v|| / lambda <= 1.1e-6),
// and the generic and fused paths give the same estimates to <= 2.9e-15 at every iteration. H v by
// double backward (the gradient of <grad L, v>) gives the same eigenvalue: two routes, one number.
BOOST_AUTO_TEST_CASE(hessian_eigen_converges_to_the_same_top_eigenvalue_on_both_paths) {
    const json summary = run_example("hessian_eigen");
    BOOST_TEST(summary.at("product") == "hvp");
    BOOST_TEST(summary.at("mse").get<double>() < 0.02);
    BOOST_TEST(summary.at("eigenvalue").get<double>() > 0);
    BOOST_TEST(summary.at("iterations").get<int>() < 100);
    BOOST_TEST(summary.at("residual").get<double>() < 1e-4);
    BOOST_TEST(summary.at("fused_ran").get<bool>());
    BOOST_TEST(summary.at("max_rel_difference").get<double>() < 1e-12);
    const json reverse = run_example("hessian_eigen", "--product double-backward");
    BOOST_TEST(reverse.at("eigenvalue").get<double>() == summary.at("eigenvalue").get<double>(),
               boost::test_tools::tolerance(1e-10));
}

// Echo at delay 6 with TBPTT(k2, k2): seeds 1-3 give 0.26-0.33 for k2 = 4 (chance 0.25; a read-out
// of what the recurrence retains by accident) and 0.996-0.999 for k2 = 12.
BOOST_AUTO_TEST_CASE(tbptt_limit_k2_beyond_the_delay_learns_and_k2_below_stays_near_chance) {
    const json summary = run_example("tbptt_limit", "--delay 6 --k2 4,12");
    const double chance = summary.at("chance");
    const json& runs = summary.at("runs");
    BOOST_TEST(runs.at(0).at("k2").get<int>() == 4);
    BOOST_TEST(runs.at(0).at("accuracy").get<double>() < chance + 0.15);
    BOOST_TEST(runs.at(1).at("k2").get<int>() == 12);
    BOOST_TEST(runs.at(1).at("accuracy").get<double>() > 0.9);
}

// Tags = the token 2 positions later: seeds 1-4 give the unidirectional GRU 0.245-0.253 (chance
// 0.25: it has not read the future) and the bidirectional one 1.000.
BOOST_AUTO_TEST_CASE(bidirectional_tagging_needs_the_reverse_direction) {
    const json summary = run_example("bidirectional_tagging");
    const double chance = summary.at("chance");
    BOOST_TEST(summary.at("unidirectional").get<double>() < chance + 0.1);
    BOOST_TEST(summary.at("bidirectional").get<double>() > 0.9);
}

// Seeds 1-4: one step ahead 0.2% of persistence's MSE, 30 steps free running 0.2-0.8%.
BOOST_AUTO_TEST_CASE(mackey_glass_forecasts_beat_persistence_one_step_and_free_running) {
    const json summary = run_example("mackey_glass");
    BOOST_TEST(summary.at("one_step_mse").get<double>() < 0.05 * summary.at("one_step_persistence_mse").get<double>());
    BOOST_TEST(summary.at("horizon").get<int>() == 30);
    BOOST_TEST(summary.at("free_running_mse").get<double>() < 0.1 * summary.at("free_running_persistence_mse").get<double>());
}

// Greedy decoding of 150 numbers never trained on: 0.967-0.993 over seeds 1-4.
BOOST_AUTO_TEST_CASE(seq2seq_decodes_held_out_number_words_greedily) {
    const json summary = run_example("seq2seq");
    BOOST_TEST(summary.at("held_out").get<int>() == 150);
    BOOST_TEST(summary.at("held_out_sequence_accuracy").get<double>() > 0.85);
}

// Debian's word lists: seeds 1-3 reach 0.905-0.908 on 2000 held-out words, the majority class
// (German) is 0.37; the confusion table accounts for every held-out word.
BOOST_AUTO_TEST_CASE(language_id_beats_the_majority_class_on_debian_word_lists) {
    const json summary = run_example("language_id");
    const double accuracy = summary.at("accuracy");
    BOOST_TEST(accuracy > summary.at("majority_baseline").get<double>() + 0.3);
    double total = 0, diagonal = 0;
    const json& confusion = summary.at("confusion");
    for (std::size_t i = 0; i < confusion.size(); ++i)
        for (std::size_t j = 0; j < confusion.at(i).size(); ++j) {
            total += confusion.at(i).at(j).get<double>();
            if (i == j) diagonal += confusion.at(i).at(j).get<double>();
        }
    BOOST_TEST(total == summary.at("test_words").get<double>());
    BOOST_TEST(diagonal / total == accuracy, boost::test_tools::tolerance(1e-12));
}

// The hand-written sums over time steps match the tape to round-off (exactly, over seeds 1-6) and
// central differences to 0.6e-9-2.6e-9 at T = 20, float64.
BOOST_AUTO_TEST_CASE(bptt_by_hand_matches_the_tape_and_finite_differences) {
    const json summary = run_example("bptt_by_hand");
    BOOST_TEST(summary.at("steps").get<int>() == 20);
    for (const char* name : {"W_xh", "W_hh", "b", "W_hy", "h_0"}) {
        BOOST_TEST_CONTEXT(name) {
            BOOST_TEST(summary.at("hand_vs_tape").at(name).get<double>() < 1e-8);
            BOOST_TEST(summary.at("hand_vs_numeric").at(name).get<double>() < 1e-8);
        }
    }
}

// Spectral radius 2, SGD lr 0.1, adding problem at T = 10: seeds 1-6 diverge without clipping at
// steps 30-56 (loss inf, gradient norms 1e19-1e31 before it), and with clip_grad_norm 1 train
// to a held-out MSE of 0.036-0.092 (always predicting 1: 0.167) from a first loss of 1-2.
BOOST_AUTO_TEST_CASE(exploding_clipping_diverges_without_clipping_and_trains_with_it) {
    const json summary = run_example("exploding_clipping");
    const json& unclipped = summary.at("unclipped");
    BOOST_TEST(unclipped.at("diverged").get<bool>());
    BOOST_TEST(unclipped.at("diverged_at").get<int>() < 200);
    BOOST_TEST(unclipped.at("max_grad_norm").get<double>() > 1e6);
    const json& clipped = summary.at("clipped");
    BOOST_TEST(!clipped.at("diverged").get<bool>());
    BOOST_TEST(clipped.at("steps_completed").get<int>() == summary.at("steps").get<int>());
    BOOST_TEST(clipped.at("held_out_mse").get<double>() < 0.7 * summary.at("baseline_mse").get<double>());
}
