// The character-level LSTM language model of char_lm, trained data-parallel over MPI
// (rewind::dist). The same program runs on one process and under mpirun:
//
//   build/bin/dist_char_lm                                   # one process
//   mpirun -np 2 build/bin/dist_char_lm                      # two ranks on this machine
//   mpirun -np 8 --hostfile hosts build/bin/dist_char_lm     # eight ranks over the hosts listed
//
// The `--batch` streams (the GLOBAL batch) are shared out among the ranks by column
// (rw::dist::shard_of); each rank runs truncated BPTT over its columns, the gradients are
// averaged during backward (GradientReducer, weighted by each rank's column count), and every
// rank applies the same Adam step, so the training is the one a single process does, whatever
// the number of ranks. Rank 0 prints, validates, samples and writes the checkpoint (--checkpoint
// FILE, after every epoch); a run started with an existing checkpoint resumes from it, with any
// number of ranks. If a rank dies, mpirun ends the job; start it again to resume
// (--crash-after-epoch E rehearses that: the last rank kills itself after epoch E).

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <sys/resource.h>
#include <xtensor/xview.hpp>

#include <rewind/autograd.hpp>
#include <rewind/dist.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/clip.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/train/tbptt.hpp>

#include "char_text.hpp"
#include "common.hpp"

using namespace rw;
using namespace rw::nn;
using examples::Streams;
using examples::Vocabulary;

namespace {

struct Settings {
    std::string text_file, checkpoint;
    std::size_t epochs = 10, hidden = 128, batch = 16, sample_length = 120;
    TbpttOptions tbptt{.k1 = 16, .k2 = 32};
    double lr = 5e-3;
    std::size_t bucket_kib = 256;
    bool no_overlap = false;
    std::size_t crash_after_epoch = 0;  // fault injection: the last rank dies after saving this epoch
};

// This rank's columns [part.begin, part.end) of every stream array.
Streams columns(const Streams& all, dist::Shard part) {
    auto take = [&](const xt::xarray<std::int64_t>& a) {
        return xt::xarray<std::int64_t>(xt::view(a, xt::all(), xt::range(part.begin, part.end)));
    };
    return {take(all.inputs), take(all.targets)};
}

// CPU seconds this process has used (all its threads), for the throughput report: on a loaded
// machine wall time says how much of the CPU the run got, this how much it needed.
double cpu_seconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    auto seconds = [](const timeval& t) { return double(t.tv_sec) + 1e-6 * double(t.tv_usec); };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int run(const dist::Communicator& comm, const Settings& settings, const examples::CommonOptions& common) {
    const bool root = comm.is_root();
    std::string text = examples::kAlice;
    if (!settings.text_file.empty()) {
        auto contents = examples::read_text(settings.text_file);
        if (!contents) throw std::runtime_error("cannot read " + settings.text_file);
        text = *contents;
    }
    const Vocabulary vocab(text);
    const std::size_t split = text.size() * 9 / 10;
    if (split / settings.batch < 2 || text.size() - split < 2)
        throw std::runtime_error(fmt::format("the text ({} bytes) is too short for {} streams", text.size(), settings.batch));
    if (settings.batch < std::size_t(comm.size()))
        throw std::runtime_error(fmt::format("--batch {} gives some of the {} ranks no stream; use at least one per rank",
                                             settings.batch, comm.size()));
    // Every rank cuts the same global streams and keeps its columns of them.
    const dist::Shard part = dist::shard_of(settings.batch, comm);
    const Streams train = columns(examples::make_streams(text.substr(0, split), settings.batch, vocab), part);
    const Streams valid = examples::make_streams(text.substr(split), 1, vocab);

    Generator init(common.seed + 1);
    Module<float> model;
    const auto embedding = model.register_module("embedding", std::make_shared<Embedding<float>>(vocab.size(), 32, init));
    const auto lstm = model.register_module("lstm", make_lstm<float>({.input_size = 32, .hidden_size = settings.hidden, .seed = common.seed}));
    const auto head = model.register_module("head", std::make_shared<Linear<float>>(settings.hidden, vocab.size(), init));
    const NamedTensors<float> parameters = model.named_parameters();
    Adam<float> adam(parameters, AdamOptions{.lr = settings.lr, .non_finite = NonFinitePolicy::skip});
    // Every rank starts from rank 0's weights (here they agree anyway: same seed).
    dist::broadcast_parameters(comm, model);

    std::size_t first_epoch = 1;
    Checkpoint<float> checkpoint(model);
    checkpoint.with(adam);
    if (!settings.checkpoint.empty()) {
        const bool exists = comm.any(root && std::filesystem::exists(settings.checkpoint));
        if (exists) {
            const auto user = dist::load_checkpoint(comm, checkpoint, settings.checkpoint);
            first_epoch = std::stoul(user.at("epoch")) + 1;
            if (root)
                fmt::print("resumed from {} after epoch {} (saved by {} rank(s), now {})\n", settings.checkpoint,
                           first_epoch - 1, user.at("ranks"), comm.size());
        }
    }

    dist::GradientReducer<float> reducer(
        comm, parameters, {.bucket_bytes = settings.bucket_kib * 1024, .overlap = !settings.no_overlap});
    // Each chunk's loss is a mean over this rank's columns: weighted by their number, the
    // average is the mean over all --batch streams, as on one process.
    reducer.set_weight(double(part.size()));
    const std::size_t k2 = settings.tbptt.k2 == 0 ? settings.tbptt.k1 : settings.tbptt.k2;
    if (root)
        fmt::print("{} bytes, {} distinct; {} streams of {} steps on {} rank(s) ({} to {} streams each); "
                   "Embedding(32) -> LSTM({}); TBPTT k1 = {}, k2 = {}; {} bucket(s), all-reduce {}\n\n",
                   text.size(), vocab.size(), settings.batch, train.targets.shape(0), comm.size(),
                   settings.batch / std::size_t(comm.size()), (settings.batch + std::size_t(comm.size()) - 1) / std::size_t(comm.size()),
                   settings.hidden, settings.tbptt.k1, k2, reducer.buckets().size(),
                   settings.no_overlap ? "after backward" : "overlapping backward");

    double train_seconds = 0, wait_seconds = 0, train_cpu = 0;
    std::size_t sequences = 0, skipped = 0;
    for (std::size_t epoch = first_epoch; epoch <= settings.epochs; ++epoch) {
        double loss_sum = 0;  // this rank's: sum over chunks of loss * steps * columns
        std::size_t chunks = 0, counted = 0;
        adam.zero_grad();
        auto chunk_loss = [&](const Tensor<float>& outputs, std::size_t begin, std::size_t end) {
            const xt::xarray<std::int64_t> targets = xt::view(train.targets, xt::range(begin, end), xt::all());
            return sequence_cross_entropy(head->forward(outputs), targets);
        };
        auto chunk_step = [&](const TbpttChunk<float>& chunk) {
            wait_seconds += reducer.synchronize().wait_seconds;
            clip_grad_norm(parameters, 1.0);
            // A NaN or Inf on any rank reaches every rank's averaged gradient (sync.finite is
            // false everywhere): all ranks skip this step together.
            if (!adam.step().applied) ++skipped;
            adam.zero_grad();
            loss_sum += chunk.loss * double((chunk.end - chunk.begin) * part.size());
            counted += chunk.end - chunk.begin;
            ++chunks;
        };
        auto window_input = [&](std::size_t from, std::size_t to) {
            return embedding->forward(xt::eval(xt::view(train.inputs, xt::range(from, to), xt::all())));
        };
        const auto start = std::chrono::steady_clock::now();
        const double cpu_start = cpu_seconds();
        truncated_bptt<float>(*lstm, train.inputs.shape(0), window_input, settings.tbptt, chunk_loss, chunk_step);
        train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        train_cpu += cpu_seconds() - cpu_start;
        sequences += chunks * settings.batch;
        const double train_loss = comm.sum(loss_sum) / double(counted * settings.batch);

        if (!settings.checkpoint.empty())
            dist::save_checkpoint(comm, checkpoint, settings.checkpoint,
                                  {{"epoch", std::to_string(epoch)}, {"ranks", std::to_string(comm.size())}});
        if (epoch == settings.crash_after_epoch && comm.rank() == comm.size() - 1) {
            fmt::print(stderr, "dist_char_lm: rank {} kills itself after epoch {} (--crash-after-epoch)\n", comm.rank(), epoch);
            std::raise(SIGKILL);  // as a machine that fails: no clean-up, no message to the others
        }
        if (root && (epoch == first_epoch || epoch % std::max<std::size_t>(1, settings.epochs / 10) == 0 || epoch == settings.epochs)) {
            NoGradGuard no_grad;
            const double valid_loss =
                sequence_cross_entropy(head->forward(lstm->forward(embedding->forward(valid.inputs)).output), valid.targets).item();
            fmt::print("epoch {:3}  train perplexity {:7.3f}  validation perplexity {:7.3f}\n", epoch, std::exp(train_loss),
                       std::exp(valid_loss));
        }
    }

    const auto replicas = dist::check_replicas(comm, parameters);
    if (!replicas.identical) throw std::runtime_error(replicas.to_string());
    std::size_t gradient_bytes = 0;
    for (const auto& named : parameters) gradient_bytes += named.second.size() * sizeof(float);
    const double all_cpu = comm.sum(train_cpu);
    if (root && sequences > 0) {
        fmt::print("\n{}\n", replicas.to_string());
        fmt::print("throughput: {:.1f} sequences/s ({} steps each, {:.0f} characters/s) on {} rank(s) x {} thread(s); "
                   "waiting on the all-reduce: {:.1f}% of the training time ({:.0f} KiB per step in {} bucket(s)); "
                   "{} step(s) skipped; {:.2f} CPU s per 1000 sequences over all ranks\n",
                   double(sequences) / train_seconds, settings.tbptt.k1,
                   double(sequences * settings.tbptt.k1) / train_seconds, comm.size(), common.threads,
                   100 * wait_seconds / train_seconds, double(gradient_bytes) / 1024, reducer.buckets().size(), skipped,
                   1000 * all_cpu / double(sequences));
    }
    if (root && settings.sample_length > 0) {
        NoGradGuard no_grad;
        Generator sampler(common.seed + 2);
        std::vector<Tensor<float>> state;
        std::string generated = "Alice ";
        auto feed = [&](char c) {
            xt::xarray<std::int64_t> index = xt::xarray<std::int64_t>::from_shape({1, 1});
            index(0, 0) = vocab.index(c);
            auto result = lstm->forward(embedding->forward(index), state);
            state = result.state;
            return xt::xarray<float>(xt::view(head->forward(result.output).value(), 0, 0, xt::all()));
        };
        xt::xarray<float> logits;
        for (char c : generated) logits = feed(c);
        for (std::size_t i = 0; i < settings.sample_length; ++i) {
            generated += vocab.symbols[std::size_t(examples::sample(logits, 0.6, sampler))];
            logits = feed(generated.back());
        }
        fmt::print("\nsample (temperature 0.6):\n{}\n", generated);
    }
    return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) {
    dist::Communicator comm(&argc, &argv);
    CLI::App app{"character-level LSTM language model, trained data-parallel over MPI (run it under mpirun -np N)"};
    examples::CommonOptions common;
    Settings settings;
    examples::add_common_options(app, common);
    app.add_option("--text", settings.text_file, "train on this file (bytes) instead of the embedded text");
    app.add_option("--epochs", settings.epochs, "passes over the text")->capture_default_str();
    app.add_option("--k1", settings.tbptt.k1, "steps between updates")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--k2", settings.tbptt.k2, "steps gradients flow back (>= k1)")->capture_default_str();
    app.add_option("--hidden", settings.hidden, "LSTM hidden size")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch", settings.batch, "streams read side by side, over all ranks together")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--lr", settings.lr, "Adam learning rate")->capture_default_str();
    app.add_option("--bucket-kib", settings.bucket_kib, "gradient bucket size (KiB) of the all-reduce")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_flag("--no-overlap", settings.no_overlap, "all-reduce after backward instead of during it");
    app.add_option("--checkpoint", settings.checkpoint, "save here after every epoch; resume from it if it exists");
    app.add_option("--crash-after-epoch", settings.crash_after_epoch,
                   "fault injection: the last rank kills itself (SIGKILL) after this epoch's checkpoint");
    app.add_option("--sample", settings.sample_length, "characters to sample at the end")->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return comm.is_root() ? app.exit(e) : (e.get_exit_code() == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
    }
    examples::apply(common);
    if (settings.tbptt.k2 != 0 && settings.tbptt.k2 < settings.tbptt.k1) {
        if (comm.is_root()) fmt::print(stderr, "--k2 must be at least --k1 (or 0, meaning k2 = k1)\n");
        return EXIT_FAILURE;
    }
    try {
        return run(comm, settings, common);
    } catch (const std::exception& e) {
        fmt::print(stderr, "dist_char_lm: rank {} of {}: {}\n", comm.rank(), comm.size(), e.what());
        // The other ranks may be waiting in a collective for this one: end them all.
        if (comm.size() > 1) comm.abort(EXIT_FAILURE);
        return EXIT_FAILURE;
    }
}
