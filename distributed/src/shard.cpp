#include "rewind/dist/shard.hpp"

#include <algorithm>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

namespace rw::dist {

Shard shard_of(std::size_t global, int rank, int ranks) {
    if (ranks <= 0 || rank < 0 || rank >= ranks)
        throw std::invalid_argument(fmt::format("shard_of: rank {} of {} ranks", rank, ranks));
    const std::size_t r = std::size_t(rank), n = std::size_t(ranks);
    const std::size_t base = global / n, extra = global % n;
    const std::size_t begin = r * base + std::min(r, extra);
    return {begin, begin + base + (r < extra ? 1 : 0)};
}

DistributedSampler::DistributedSampler(std::size_t examples, std::size_t global_batch, std::uint64_t seed, int rank,
                                       int ranks, bool shuffle, bool drop_last)
    : examples_(examples), global_batch_(global_batch), seed_(seed), rank_(rank), ranks_(ranks), shuffle_(shuffle),
      drop_last_(drop_last) {
    if (global_batch == 0) throw std::invalid_argument("DistributedSampler: the global batch must hold at least one example");
    if (drop_last && examples < global_batch)
        throw std::invalid_argument(fmt::format("DistributedSampler: {} examples make no full batch of {}", examples, global_batch));
    shard_of(0, rank, ranks);  // validates rank and ranks
}

std::size_t DistributedSampler::batches_per_epoch() const {
    return drop_last_ ? examples_ / global_batch_ : (examples_ + global_batch_ - 1) / global_batch_;
}

std::vector<std::size_t> DistributedSampler::order(std::size_t epoch) const {
    std::vector<std::size_t> indices(examples_);
    for (std::size_t i = 0; i < examples_; ++i) indices[i] = i;
    if (!shuffle_) return indices;
    // Seeded from (seed, epoch) only; the draws are spelled out (not std::shuffle, whose draws
    // the standard leaves to the library) so every platform reads the same order.
    std::seed_seq sequence{std::uint32_t(seed_), std::uint32_t(seed_ >> 32), std::uint32_t(epoch), std::uint32_t(epoch >> 32)};
    std::mt19937_64 engine(sequence);
    for (std::size_t i = examples_; i > 1; --i) std::swap(indices[i - 1], indices[engine() % i]);
    return indices;
}

std::shared_ptr<const std::vector<std::size_t>> DistributedSampler::cached_order(std::size_t epoch) const {
    const std::lock_guard lock(cache_->mutex);
    if (!cache_->order || cache_->epoch != epoch) {
        cache_->order = std::make_shared<const std::vector<std::size_t>>(order(epoch));
        cache_->epoch = epoch;
        ++cache_->drawn;
    }
    return cache_->order;
}

std::size_t DistributedSampler::orders_drawn() const {
    const std::lock_guard lock(cache_->mutex);
    return cache_->drawn;
}

std::vector<std::size_t> DistributedSampler::global_batch(std::size_t epoch, std::size_t batch) const {
    if (batch >= batches_per_epoch())
        throw std::out_of_range(fmt::format("DistributedSampler: batch {} of an epoch of {}", batch, batches_per_epoch()));
    const std::size_t begin = batch * global_batch_, end = std::min(begin + global_batch_, examples_);
    std::vector<std::size_t> indices(end - begin);
    if (!shuffle_) {  // file order: no order to draw
        for (std::size_t i = begin; i < end; ++i) indices[i - begin] = i;
        return indices;
    }
    const auto all = cached_order(epoch);
    std::copy(all->begin() + std::ptrdiff_t(begin), all->begin() + std::ptrdiff_t(end), indices.begin());
    return indices;
}

std::vector<std::size_t> DistributedSampler::local_batch(std::size_t epoch, std::size_t batch) const {
    const auto global = global_batch(epoch, batch);
    const Shard part = shard_of(global.size(), rank_, ranks_);
    return {global.begin() + std::ptrdiff_t(part.begin), global.begin() + std::ptrdiff_t(part.end)};
}

}  // namespace rw::dist
