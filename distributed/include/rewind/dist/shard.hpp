#pragma once
// Which part of the data each rank trains on, decided identically on every rank from one seed,
// so that no data is sent around and the learning problem does not depend on the rank count.
//
// The caller states the GLOBAL batch (the examples, or the stream columns, one step of training
// learns from); each rank takes a contiguous, balanced part of it (sizes differ by at most one).
// Training with the reducer's set_weight(part size) then follows the same trajectory on 1, 2 or
// N ranks: the averaged gradient is the gradient of the whole global batch's mean loss.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "rewind/dist/communicator.hpp"

namespace rw::dist {

struct Shard {
    std::size_t begin = 0, end = 0;  // [begin, end) of the global range
    std::size_t size() const { return end - begin; }
    bool empty() const { return begin == end; }
};

// Rank `rank` of `ranks`'s part of [0, global): the first global % ranks ranks get one more.
Shard shard_of(std::size_t global, int rank, int ranks);
inline Shard shard_of(std::size_t global, const Communicator& comm) { return shard_of(global, comm.rank(), comm.size()); }

// A data set of `examples` examples read in global batches of `global_batch`, in an order drawn
// afresh every epoch from (seed, epoch) alone (Fisher-Yates on a 64-bit Mersenne Twister), or
// in file order without shuffle. Stateless: a run resumed at (epoch, batch), with any number of
// ranks, reads exactly what an uninterrupted run reads. The last batch of an epoch holds the
// remainder (fewer examples) unless drop_last. An epoch's order is drawn once, when its first
// batch is read, and kept until another epoch is read (copies share it); the methods are const
// and safe to call from several threads.
class DistributedSampler {
public:
    DistributedSampler(std::size_t examples, std::size_t global_batch, std::uint64_t seed, int rank, int ranks,
                       bool shuffle = true, bool drop_last = false);
    DistributedSampler(std::size_t examples, std::size_t global_batch, std::uint64_t seed, const Communicator& comm,
                       bool shuffle = true, bool drop_last = false)
        : DistributedSampler(examples, global_batch, seed, comm.rank(), comm.size(), shuffle, drop_last) {}

    std::size_t batches_per_epoch() const;
    // Every example index of global batch `batch` of `epoch`, in order.
    std::vector<std::size_t> global_batch(std::size_t epoch, std::size_t batch) const;
    // This rank's part of it (shard_of over the global batch); may be empty.
    std::vector<std::size_t> local_batch(std::size_t epoch, std::size_t batch) const;
    // The epoch's order of all examples.
    std::vector<std::size_t> order(std::size_t epoch) const;
    // How many epoch orders global_batch and local_batch have drawn so far (by this sampler and
    // its copies): one per epoch read batch after batch.
    std::size_t orders_drawn() const;

private:
    struct OrderCache {
        std::mutex mutex;
        std::size_t epoch = 0, drawn = 0;
        std::shared_ptr<const std::vector<std::size_t>> order;  // of `epoch`; null before the first
    };
    std::shared_ptr<const std::vector<std::size_t>> cached_order(std::size_t epoch) const;

    std::size_t examples_, global_batch_;
    std::uint64_t seed_;
    int rank_, ranks_;
    bool shuffle_, drop_last_;
    std::shared_ptr<OrderCache> cache_ = std::make_shared<OrderCache>();
};

}  // namespace rw::dist
