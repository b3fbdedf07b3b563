// Data-parallel training (rewind::dist). ctest runs this on 1 process and under mpirun with 2
// and 3 ranks; every case compares the distributed result with what one process computes on
// the whole global batch (each rank computes that reference itself, on its own model copy).
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <unistd.h>
#include <xtensor/xview.hpp>
#include <rewind/autograd.hpp>
#include <rewind/dist.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/layers/recurrent.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <rewind/nn/train/optim.hpp>
#include <rewind/nn/train/tbptt.hpp>

using namespace rw;
using namespace rw::nn;
using Array = xt::xarray<double>;
namespace fs = std::filesystem;

namespace {

// MPI lives as long as the test program.
dist::Communicator* world = nullptr;
struct MpiFixture {
    dist::Communicator comm{&boost::unit_test::framework::master_test_suite().argc,
                            &boost::unit_test::framework::master_test_suite().argv};
    MpiFixture() { world = &comm; }
    ~MpiFixture() { world = nullptr; }
};
BOOST_TEST_GLOBAL_FIXTURE(MpiFixture);

// ||a - b|| / ||b|| (0 when both are zero).
double relative_difference(const Array& a, const Array& b) {
    BOOST_REQUIRE(a.shape() == b.shape());
    const double scale = std::sqrt(double(xt::sum(b * b)()));
    const double error = std::sqrt(double(xt::sum((a - b) * (a - b))()));
    return scale == 0 ? error : error / scale;
}

// The largest relative difference over all parameters' values (or gradients).
double worst_difference(const NamedTensors<double>& a, const NamedTensors<double>& b, bool gradients) {
    BOOST_REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const Tensor<double> x = gradients ? a[i].second.grad() : a[i].second;
        const Tensor<double> y = gradients ? b[i].second.grad() : b[i].second;
        BOOST_REQUIRE_MESSAGE(x.defined() == y.defined(), a[i].first);
        if (x.defined()) worst = std::max(worst, relative_difference(x.value(), y.value()));
    }
    return worst;
}

// LSTM (2 layers) -> Linear regression on sequences of different lengths, float64.
struct Net : Module<double> {
    std::shared_ptr<Recurrent<double>> lstm;
    std::shared_ptr<Linear<double>> head;
    explicit Net(std::uint64_t seed) {
        Generator init(seed);
        lstm = register_module("lstm", make_lstm<double>({.input_size = 3, .hidden_size = 5, .num_layers = 2, .seed = seed}));
        head = register_module("head", std::make_shared<Linear<double>>(5, 2, init));
    }
};

// A data set of sequences [T, N, I] with targets [T, N, 2] and lengths in 1..T.
struct Sequences {
    Array inputs, targets;
    std::vector<std::int64_t> lengths;
    explicit Sequences(std::size_t count, std::size_t steps = 6) {
        Generator data(99);
        inputs = Array::from_shape({steps, count, 3});
        targets = Array::from_shape({steps, count, 2});
        for (auto& v : inputs) v = data.uniform(-1, 1);
        for (auto& v : targets) v = data.uniform(-1, 1);
        for (std::size_t n = 0; n < count; ++n) lengths.push_back(std::int64_t(1 + (n * 5 + 2) % steps));
    }
    // The mean squared error over the valid steps of the examples `batch`; `terms` receives how
    // many (step, example) positions that mean is over: the rank's weight.
    Tensor<double> loss(Net& net, const std::vector<std::size_t>& batch, double& terms) const {
        const std::size_t steps = inputs.shape(0);
        Array x = Array::from_shape({steps, batch.size(), 3}), y = Array::from_shape({steps, batch.size(), 2});
        std::vector<std::int64_t> picked;
        for (std::size_t b = 0; b < batch.size(); ++b) {
            xt::view(x, xt::all(), b, xt::all()) = xt::view(inputs, xt::all(), batch[b], xt::all());
            xt::view(y, xt::all(), b, xt::all()) = xt::view(targets, xt::all(), batch[b], xt::all());
            picked.push_back(lengths[batch[b]]);
        }
        terms = double(std::accumulate(picked.begin(), picked.end(), std::int64_t(0)));
        const auto output = net.lstm->forward(Tensor<double>(x), {}, picked).output;
        return sequence_mse(net.head->forward(output), Tensor<double>(y), length_mask<double>(steps, picked));
    }
};

// One step on this rank's part of the global batch; with no part, only the synchronisation.
dist::SyncReport distributed_backward(const Sequences& data, Net& net, dist::GradientReducer<double>& reducer,
                                      const std::vector<std::size_t>& local) {
    double terms = 0;
    if (local.empty()) {
        reducer.set_weight(0);
    } else {
        Tensor<double> loss = data.loss(net, local, terms);
        reducer.set_weight(terms);
        loss.backward();
    }
    return reducer.synchronize();
}

void whole_batch_backward(const Sequences& data, Net& net, const std::vector<std::size_t>& batch) {
    double terms = 0;
    data.loss(net, batch, terms).backward();
}

const dist::ReducerOptions small_buckets_overlapped{.bucket_bytes = 256, .overlap = true};
const dist::ReducerOptions after_backward{.bucket_bytes = 256, .overlap = false};

// Trains `steps` steps with Adam from batch `from` on (ranks as the communicator says) and
// returns; the reference runs the same on one process (comm == nullptr).
void train(const Sequences& data, Net& net, Adam<double>& adam, dist::GradientReducer<double>* reducer,
           std::size_t from, std::size_t to, std::size_t global_batch) {
    const int rank = reducer ? world->rank() : 0, ranks = reducer ? world->size() : 1;
    const dist::DistributedSampler sampler(data.lengths.size(), global_batch, 7, rank, ranks);
    for (std::size_t step = from; step < to; ++step) {
        const std::size_t epoch = step / sampler.batches_per_epoch(), batch = step % sampler.batches_per_epoch();
        adam.zero_grad();
        if (reducer) {
            const auto report = distributed_backward(data, net, *reducer, sampler.local_batch(epoch, batch));
            BOOST_TEST(report.finite);
        } else {
            whole_batch_backward(data, net, sampler.global_batch(epoch, batch));
        }
        BOOST_TEST(adam.step().applied);
    }
}

// A file every rank names alike, in the temp directory, removed at the end.
struct TempFile {
    fs::path path;
    explicit TempFile(const std::string& name) {
        std::string pid = std::to_string(::getpid());
        pid = world->broadcast(pid);  // rank 0's pid: the same name on every rank
        path = fs::temp_directory_path() / ("rewind_dist_" + pid + "_" + name);
    }
    ~TempFile() {
        std::error_code ignored;
        fs::remove(path, ignored);
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(communicator)

BOOST_AUTO_TEST_CASE(ranks_count_and_agree_on_an_error_raised_on_one_rank) {
    BOOST_TEST(world->size() >= 1);
    BOOST_TEST(world->rank() < world->size());
    BOOST_TEST(world->sum(1.0) == double(world->size()));
    world->barrier();
    const int last = world->size() - 1;
    try {
        world->agree_on_error(world->rank() == last ? "disk full" : "");
        BOOST_ERROR("agree_on_error did not throw");
    } catch (const dist::MpiError& e) {
        const std::string expected = world->size() == 1 ? "disk full" : "rank " + std::to_string(last) + ": disk full";
        BOOST_TEST(e.what() == expected);
    }
    BOOST_CHECK_NO_THROW(world->agree_on_error(""));
}

BOOST_AUTO_TEST_CASE(works_on_a_duplicate_of_an_existing_communicator) {
    dist::Communicator split(world->comm());
    BOOST_TEST(split.rank() == world->rank());
    BOOST_TEST(split.size() == world->size());
    BOOST_TEST(split.comm() != world->comm());
}

BOOST_AUTO_TEST_CASE(a_reducer_on_a_split_communicator_averages_within_its_group_only) {
    // Even and odd ranks form two groups (MPI_Comm_split by the caller); each group's reducer
    // averages its own members' gradients and never sees the other group's.
    MPI_Comm halves = MPI_COMM_NULL;
    BOOST_REQUIRE(MPI_Comm_split(world->comm(), world->rank() % 2, world->rank(), &halves) == MPI_SUCCESS);
    {
        dist::Communicator group(halves);
        BOOST_TEST(group.size() == (world->size() + 1 - world->rank() % 2) / 2);
        auto lstm = make_lstm<double>({.input_size = 2, .hidden_size = 3});
        dist::GradientReducer<double> reducer(group, lstm->named_parameters());
        // Every member's gradient is (its world rank) everywhere.
        for (auto& [name, p] : lstm->named_parameters()) p.set_grad(Tensor<double>::full(p.shape(), double(world->rank())));
        reducer.synchronize();
        double expected = 0;  // the mean world rank of this group
        for (int r = world->rank() % 2; r < world->size(); r += 2) expected += r;
        expected /= group.size();
        for (auto& [name, p] : lstm->named_parameters()) BOOST_TEST(double(xt::amax(xt::abs(p.grad().value() - expected))()) == 0.0);
    }
    MPI_Comm_free(&halves);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(sharding)

BOOST_AUTO_TEST_CASE(shards_are_contiguous_balanced_and_cover_the_global_batch) {
    for (std::size_t global : {0, 1, 5, 7, 12})
        for (int ranks = 1; ranks <= 4; ++ranks) {
            std::size_t next = 0;
            for (int r = 0; r < ranks; ++r) {
                const auto part = dist::shard_of(global, r, ranks);
                BOOST_TEST(part.begin == next);
                BOOST_TEST(part.size() <= global / std::size_t(ranks) + 1);
                BOOST_TEST(part.size() >= global / std::size_t(ranks));
                next = part.end;
            }
            BOOST_TEST(next == global);
        }
    BOOST_CHECK_THROW(dist::shard_of(4, 2, 2), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(the_ranks_parts_make_the_global_batch_whatever_the_rank_count) {
    const dist::DistributedSampler one(11, 5, 3, 0, 1);
    BOOST_TEST(one.batches_per_epoch() == 3u);
    BOOST_TEST((one.global_batch(0, 2).size() == 1u));
    BOOST_TEST((one.order(0) != one.order(1)));  // a new order every epoch
    for (int ranks = 1; ranks <= 4; ++ranks)
        for (std::size_t epoch = 0; epoch < 2; ++epoch)
            for (std::size_t batch = 0; batch < 3; ++batch) {
                std::vector<std::size_t> joined;
                for (int r = 0; r < ranks; ++r) {
                    const auto part = dist::DistributedSampler(11, 5, 3, r, ranks).local_batch(epoch, batch);
                    joined.insert(joined.end(), part.begin(), part.end());
                }
                BOOST_TEST((joined == one.global_batch(epoch, batch)));
            }
    BOOST_TEST((dist::DistributedSampler(11, 5, 3, 0, 1, false).order(4)[10] == 10u));
    BOOST_TEST(dist::DistributedSampler(11, 5, 3, 0, 1, true, true).batches_per_epoch() == 2u);
}

BOOST_AUTO_TEST_CASE(an_epoch_read_batch_after_batch_draws_its_order_once) {
    const dist::DistributedSampler sampler(1000, 10, 5, 0, 1);
    for (std::size_t epoch : {0, 1, 0}) {
        std::vector<std::size_t> read;
        for (std::size_t batch = 0; batch < sampler.batches_per_epoch(); ++batch) {
            const auto part = sampler.local_batch(epoch, batch);
            read.insert(read.end(), part.begin(), part.end());
        }
        BOOST_TEST((read == sampler.order(epoch)));  // the same order, drawn once and kept
    }
    BOOST_TEST(sampler.orders_drawn() == 3u);  // epochs 0, 1 and 0 again: one draw each
    const dist::DistributedSampler in_file_order(1000, 10, 5, 0, 1, false);
    BOOST_TEST((in_file_order.global_batch(0, 3) == std::vector<std::size_t>{30, 31, 32, 33, 34, 35, 36, 37, 38, 39}));
    BOOST_TEST(in_file_order.orders_drawn() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(replicas)

BOOST_AUTO_TEST_CASE(broadcast_gives_every_rank_the_roots_parameters) {
    Net net(100 + std::uint64_t(world->rank()));  // a different initialisation on every rank
    const auto before = dist::check_replicas(*world, net.named_parameters());
    BOOST_TEST(before.identical == (world->size() == 1), before.to_string());
    dist::broadcast_parameters(*world, net);
    const auto after = dist::check_replicas(*world, net.named_parameters());
    BOOST_TEST(after.identical, after.to_string());
    BOOST_TEST(worst_difference(net.named_parameters(), Net(100).named_parameters(), false) == 0.0);
}

BOOST_AUTO_TEST_CASE(a_model_of_another_shape_on_one_rank_is_named) {
    auto lstm = make_lstm<double>({.input_size = 3, .hidden_size = world->rank() == world->size() - 1 ? 4u : 5u});
    if (world->size() == 1) return;
    BOOST_CHECK_EXCEPTION(dist::broadcast_parameters(*world, *lstm), dist::MpiError, [](const dist::MpiError& e) {
        return std::string(e.what()).find("rank " + std::to_string(world->size() - 1) + " has other parameter") !=
               std::string::npos;
    });
}

BOOST_AUTO_TEST_CASE(a_checkpoint_written_by_the_root_loads_on_every_rank_without_a_shared_file) {
    TempFile file("roundtrip.safetensors");
    Net saved(5), loaded(6 + std::uint64_t(world->rank()));
    Checkpoint<double> writer(saved), reader(loaded);
    // Only the root's file system has the file: the others get its bytes from the root.
    dist::save_checkpoint(*world, writer, file.path, {{"step", "4"}});
    BOOST_TEST(fs::exists(file.path) == true);
    const auto user = dist::load_checkpoint(*world, reader, file.path);
    BOOST_TEST(user.at("step") == "4");
    BOOST_TEST(worst_difference(loaded.named_parameters(), saved.named_parameters(), false) == 0.0);
    // A missing file is the same clear error on every rank.
    BOOST_CHECK_EXCEPTION(dist::load_checkpoint(*world, reader, file.path.string() + ".missing"), dist::MpiError,
                          [](const dist::MpiError& e) { return std::string(e.what()).find("cannot open") != std::string::npos; });
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(gradients)

BOOST_AUTO_TEST_CASE(lstm_with_lengths_averaged_gradient_equals_the_whole_batch_gradient) {
    const Sequences data(7);
    std::vector<std::size_t> global(7);
    std::iota(global.begin(), global.end(), 0);
    Net reference(3);
    whole_batch_backward(data, reference, global);
    for (const auto& options : {small_buckets_overlapped, after_backward}) {
        Net net(3);
        dist::GradientReducer<double> reducer(*world, net.named_parameters(), options);
        BOOST_TEST(reducer.buckets().size() > 2u);
        const auto part = dist::shard_of(global.size(), *world);
        const auto report = distributed_backward(data, net, reducer, {global.begin() + long(part.begin), global.begin() + long(part.end)});
        BOOST_TEST(report.finite);
        BOOST_TEST(report.total_weight == double(std::accumulate(data.lengths.begin(), data.lengths.end(), 0)));
        // Overlap on: buckets started from the hooks, during backward; off: none did.
        if (options.overlap && !part.empty()) BOOST_TEST(report.started_in_backward > 0u);
        else BOOST_TEST(report.started_in_backward == 0u);
        const double difference = worst_difference(net.named_parameters(), reference.named_parameters(), true);
        BOOST_TEST(difference <= 1e-12, "relative difference " << difference << " with overlap = " << options.overlap);
    }
}

BOOST_AUTO_TEST_CASE(truncated_bptt_averaged_gradients_equal_the_whole_batch_gradients_chunk_by_chunk) {
    // A stream [T = 13, B = 5, I = 3] whose columns the ranks share; TBPTT(k1 = 4, k2 = 6), SGD.
    const std::size_t steps = 13, columns = 5;
    Generator generator(11);
    Array stream = Array::from_shape({steps, columns, 3}), target = Array::from_shape({steps, columns, 2});
    for (auto& v : stream) v = generator.uniform(-1, 1);
    for (auto& v : target) v = generator.uniform(-1, 1);
    const TbpttOptions tbptt{.k1 = 4, .k2 = 6};
    auto run = [&](Net& net, dist::Shard part, dist::GradientReducer<double>* reducer) {
        SGD<double> sgd(net.named_parameters(), {.lr = 0.1, .momentum = 0.5});
        std::vector<NamedTensors<double>> gradients;
        const Array x = xt::view(stream, xt::all(), xt::range(part.begin, part.end), xt::all());
        const Array y = xt::view(target, xt::all(), xt::range(part.begin, part.end), xt::all());
        auto loss = [&](const Tensor<double>& outputs, std::size_t begin, std::size_t end) {
            const Array chunk_target = xt::view(y, xt::range(begin, end), xt::all(), xt::all());
            return mse_loss(net.head->forward(outputs), Tensor<double>(chunk_target));
        };
        auto step = [&](const TbpttChunk<double>&) {
            if (reducer) BOOST_TEST(reducer->synchronize().finite);
            NamedTensors<double> copy;
            for (const auto& [name, p] : net.named_parameters()) copy.emplace_back(name, p.grad().detach());
            gradients.push_back(copy);
            sgd.step();
            sgd.zero_grad();
        };
        if (reducer) reducer->set_weight(double(part.size()));  // each chunk's loss is a mean over the columns
        if (part.empty()) {
            // More ranks than columns: this rank only takes part in every chunk's all-reduce.
            for (std::size_t begin = 0, index = 0; begin < steps; begin += tbptt.k1, ++index) step({.index = index});
        } else {
            truncated_bptt<double>(*net.lstm, Tensor<double>(x), tbptt, loss, step);
        }
        return gradients;
    };
    Net reference(8), net(8);
    const auto expected = run(reference, {0, columns}, nullptr);
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), small_buckets_overlapped);
    const auto got = run(net, dist::shard_of(columns, *world), &reducer);
    BOOST_REQUIRE(got.size() == expected.size());
    BOOST_TEST(got.size() == 4u);
    for (std::size_t chunk = 0; chunk < got.size(); ++chunk) {
        double worst = 0;
        for (std::size_t i = 0; i < got[chunk].size(); ++i)
            worst = std::max(worst, relative_difference(got[chunk][i].second.value(), expected[chunk][i].second.value()));
        BOOST_TEST(worst <= 1e-12, "chunk " << chunk << ": relative difference " << worst);
    }
    BOOST_TEST(worst_difference(net.named_parameters(), reference.named_parameters(), false) <= 1e-12);
}

static Tensor<double> empty_shard_loss(const Sequences& data, Net& net) {
    const std::size_t steps = data.inputs.shape(0);
    const auto output = net.lstm->forward(Tensor<double>(Array::from_shape({steps, 0, 3}))).output;
    BOOST_TEST(output.shape() == (rw::Shape{steps, 0, 5}), boost::test_tools::per_element());
    return rw::mse_loss(net.head->forward(output), Tensor<double>(Array::from_shape({steps, 0, 2})), rw::Reduction::sum);
}

// An empty shard runs like any other (a recurrent layer takes a batch of 0, as PyTorch's): the
// rank left without sequences by the epoch's last batch calls forward and backward on its empty
// batch, with weight 0, and training still gives the parameters of one process.
BOOST_AUTO_TEST_CASE(a_rank_with_an_empty_shard_runs_forward_and_backward_on_its_empty_batch) {
    const Sequences data(11);
    Net reference(21), net(21);
    Adam<double> reference_adam(reference.named_parameters(), {.lr = 0.05});
    Adam<double> adam(net.named_parameters(), {.lr = 0.05});
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), after_backward);
    train(data, reference, reference_adam, nullptr, 0, 10, 5);
    const dist::DistributedSampler sampler(data.lengths.size(), 5, 7, world->rank(), world->size());
    std::uint64_t empty_steps = 0;
    for (std::size_t step = 0; step < 10; ++step) {
        const std::size_t epoch = step / sampler.batches_per_epoch(), batch = step % sampler.batches_per_epoch();
        const auto local = sampler.local_batch(epoch, batch);
        empty_steps += local.empty();
        adam.zero_grad();
        double terms = 0;
        // A mean over no terms is undefined (sequence_mse refuses it), so the empty shard's loss is
        // the sum of its squared errors: 0, through the layer's output [T, 0, 5] and the head.
        const Tensor<double> loss = local.empty() ? empty_shard_loss(data, net) : data.loss(net, local, terms);
        reducer.set_weight(terms);
        loss.backward();
        BOOST_TEST(reducer.synchronize().finite);
        BOOST_TEST(adam.step().applied);
    }
    std::uint64_t ranks_with_empty_steps = 0;
    for (auto count : world->all_gather(empty_steps)) ranks_with_empty_steps += count > 0;
    if (world->size() > 1) BOOST_TEST(ranks_with_empty_steps > 0u);  // 11 = 5 + 5 + 1: the last batch leaves a rank empty
    BOOST_TEST(worst_difference(net.named_parameters(), reference.named_parameters(), false) <= 1e-12);
}

BOOST_AUTO_TEST_CASE(ten_steps_give_the_parameters_of_one_process_with_uneven_shards) {
    // 11 sequences in global batches of 5: parts of 3+2 on two ranks, 2+2+1 on three, and the
    // epoch's last batch of one sequence leaves ranks without data.
    const Sequences data(11);
    for (const auto& options : {small_buckets_overlapped, after_backward}) {
        Net reference(21), net(21);
        Adam<double> reference_adam(reference.named_parameters(), {.lr = 0.05});
        Adam<double> adam(net.named_parameters(), {.lr = 0.05});
        dist::GradientReducer<double> reducer(*world, net.named_parameters(), options);
        train(data, reference, reference_adam, nullptr, 0, 10, 5);
        train(data, net, adam, &reducer, 0, 10, 5);
        const double difference = worst_difference(net.named_parameters(), reference.named_parameters(), false);
        BOOST_TEST(difference <= 1e-10, "relative difference " << difference << " after 10 steps");
        BOOST_TEST(worst_difference(net.named_parameters(), Net(21).named_parameters(), false) > 1e-3);  // it trained
        const auto check = dist::check_replicas(*world, net.named_parameters());
        BOOST_TEST(check.identical, check.to_string());
    }
}

BOOST_AUTO_TEST_CASE(a_nan_on_one_rank_makes_every_rank_skip_the_step) {
    const Sequences data(6);
    for (const auto& options : {small_buckets_overlapped, after_backward}) {
        Net net(4);
        const Net untouched(4);
        Adam<double> adam(net.named_parameters(), {.lr = 0.05, .non_finite = NonFinitePolicy::skip});
        dist::GradientReducer<double> reducer(*world, net.named_parameters(), options);
        const auto part = dist::shard_of(6, *world);
        std::vector<std::size_t> local(part.size());
        std::iota(local.begin(), local.end(), part.begin);
        // The last rank plants a NaN in one gradient (through its loss, or directly when it has
        // no data); the others are finite.
        const bool plant = world->rank() == world->size() - 1;
        double terms = 0;
        if (local.empty()) {
            reducer.set_weight(0);
            Tensor<double> bias = net.head->bias();
            if (plant) bias.set_grad(Tensor<double>::full(bias.shape(), std::nan("")));
        } else {
            Tensor<double> loss = data.loss(net, local, terms);
            if (plant) loss = add(loss, mul(sum(mul(net.head->bias(), net.head->bias())), Tensor<double>::scalar(std::nan(""))));
            reducer.set_weight(terms);
            loss.backward();
        }
        const auto report = reducer.synchronize();
        BOOST_TEST(!report.finite);
        const auto step = adam.step();
        BOOST_TEST(!step.applied);
        BOOST_TEST(adam.skipped_steps() == 1u);
        BOOST_TEST(worst_difference(net.named_parameters(), untouched.named_parameters(), false) == 0.0);
    }
}

BOOST_AUTO_TEST_CASE(after_backward_mode_reduces_gradients_accumulated_over_several_passes) {
    // The global batch of 8 in two halves per rank (gradient accumulation): each half's loss is
    // a mean, so each pass is scaled by its share of the rank's terms before backward.
    const Sequences data(8);
    std::vector<std::size_t> global(8);
    std::iota(global.begin(), global.end(), 0);
    Net reference(12), net(12);
    whole_batch_backward(data, reference, global);
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), after_backward);
    const auto part = dist::shard_of(global.size(), *world);
    const std::vector<std::size_t> local(global.begin() + long(part.begin), global.begin() + long(part.end));
    const std::size_t half = local.size() / 2;
    double total = 0;
    std::vector<std::pair<Tensor<double>, double>> passes;
    for (auto [from, to] : {std::pair{std::size_t(0), half}, std::pair{half, local.size()}}) {
        if (from == to) continue;
        double terms = 0;
        passes.emplace_back(data.loss(net, {local.begin() + long(from), local.begin() + long(to)}, terms), terms);
        total += terms;
    }
    reducer.set_weight(total);
    for (auto& [loss, terms] : passes) mul_scalar(loss, terms / total).backward();
    const auto report = reducer.synchronize();
    BOOST_TEST(report.started_in_backward == 0u);
    const double difference = worst_difference(net.named_parameters(), reference.named_parameters(), true);
    BOOST_TEST(difference <= 1e-12, "relative difference " << difference);
}

BOOST_AUTO_TEST_CASE(a_second_backward_before_synchronize_is_named_with_overlap_on) {
    const Sequences data(6);
    Net net(13);
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), small_buckets_overlapped);
    const auto part = dist::shard_of(6, *world);
    std::vector<std::size_t> local(part.size());
    std::iota(local.begin(), local.end(), part.begin);
    double terms = 0;
    if (!local.empty()) {
        data.loss(net, local, terms).backward();
        BOOST_CHECK_EXCEPTION(data.loss(net, local, terms).backward(), std::logic_error, [](const std::logic_error& e) {
            return std::string(e.what()).find("received a second gradient before synchronize()") != std::string::npos;
        });
    }
    BOOST_TEST(reducer.synchronize().finite);  // and the reducer still completes the step on every rank
}

BOOST_AUTO_TEST_SUITE_END()

// Resuming with another number of ranks: ctest runs `save` on 2 ranks, then `resume` on 3
// (REWIND_DIST_CHECKPOINT names the file); disabled in the plain runs.
BOOST_AUTO_TEST_SUITE(resume, *boost::unit_test::disabled())

const std::size_t total_steps = 10, saved_at = 5, global_batch = 5;

fs::path checkpoint_file() {
    const char* file = std::getenv("REWIND_DIST_CHECKPOINT");
    BOOST_REQUIRE_MESSAGE(file, "REWIND_DIST_CHECKPOINT is not set");
    return file;
}

BOOST_AUTO_TEST_CASE(save) {
    const Sequences data(11);
    Net net(31);
    Adam<double> adam(net.named_parameters(), {.lr = 0.05});
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), small_buckets_overlapped);
    train(data, net, adam, &reducer, 0, saved_at, global_batch);
    Checkpoint<double> checkpoint(net);
    checkpoint.with(adam);
    dist::save_checkpoint(*world, checkpoint, checkpoint_file(),
                          {{"step", std::to_string(saved_at)}, {"ranks", std::to_string(world->size())}});
}

BOOST_AUTO_TEST_CASE(resume_continues_the_uninterrupted_run) {
    const Sequences data(11);
    Net net(1000 + std::uint64_t(world->rank()));  // overwritten by the checkpoint
    Adam<double> adam(net.named_parameters(), {.lr = 0.05});
    Checkpoint<double> checkpoint(net);
    checkpoint.with(adam);
    const auto user = dist::load_checkpoint(*world, checkpoint, checkpoint_file());
    BOOST_TEST_MESSAGE("resuming at step " << user.at("step") << " on " << world->size() << " ranks, saved on "
                                           << user.at("ranks"));
    dist::GradientReducer<double> reducer(*world, net.named_parameters(), small_buckets_overlapped);
    train(data, net, adam, &reducer, std::stoul(user.at("step")), total_steps, global_batch);

    Net reference(31);
    Adam<double> reference_adam(reference.named_parameters(), {.lr = 0.05});
    train(data, reference, reference_adam, nullptr, 0, total_steps, global_batch);
    const double difference = worst_difference(net.named_parameters(), reference.named_parameters(), false);
    BOOST_TEST(difference <= 1e-10, "relative difference " << difference << " from the uninterrupted run");
    BOOST_TEST(dist::check_replicas(*world, net.named_parameters()).identical);
}

BOOST_AUTO_TEST_SUITE_END()
