#pragma once
// A per-thread free list for the tape's small fixed-size blocks (tensor impls and nodes, each
// with its shared_ptr control block, through std::allocate_shared).
//
// Why: a backward frees a whole graph at once and the next forward allocates it again. These
// blocks are too big for glibc's fast bins, so each free coalesced with its neighbours and the
// merged chunks set off malloc_consolidate; on tiny ops that was a third of the time. Reusing
// the blocks skips all of it. A block freed on another thread simply joins that thread's list.

#include <cstddef>
#include <new>
#include <vector>

namespace rw::detail {

template <std::size_t Size, std::size_t Align>
class FreeList {
public:
    ~FreeList() {
        for (void* block : blocks_) ::operator delete(block, std::align_val_t(Align));
        destroyed_ = true;
    }
    static void* allocate() {
        if (destroyed_) return ::operator new(Size, std::align_val_t(Align));
        return local().pop();
    }
    static void deallocate(void* block) {
        // After the thread's list is gone (static tensors destroyed at exit): plain delete.
        if (destroyed_) return ::operator delete(block, std::align_val_t(Align));
        local().push(block);
    }

private:
    static FreeList& local() {
        thread_local FreeList list;
        return list;
    }
    void* pop() {
        if (blocks_.empty()) return ::operator new(Size, std::align_val_t(Align));
        void* block = blocks_.back();
        blocks_.pop_back();
        return block;
    }
    void push(void* block) {
        // Bounded, so a one-off huge graph does not pin its memory for the thread's lifetime.
        if (blocks_.size() < kMaxBlocks) {
            blocks_.push_back(block);
        } else {
            ::operator delete(block, std::align_val_t(Align));
        }
    }
    static constexpr std::size_t kMaxBlocks = 1 << 14;
    std::vector<void*> blocks_;
    static inline thread_local bool destroyed_ = false;
};

template <class U>
struct PoolAllocator {
    using value_type = U;
    PoolAllocator() = default;
    template <class V>
    PoolAllocator(const PoolAllocator<V>&) {}

    U* allocate(std::size_t n) {
        if (n != 1) return static_cast<U*>(::operator new(n * sizeof(U), std::align_val_t(alignof(U))));
        return static_cast<U*>(FreeList<sizeof(U), alignof(U)>::allocate());
    }
    void deallocate(U* p, std::size_t n) {
        if (n != 1) return ::operator delete(p, std::align_val_t(alignof(U)));
        FreeList<sizeof(U), alignof(U)>::deallocate(p);
    }
    template <class V>
    bool operator==(const PoolAllocator<V>&) const { return true; }
};

}  // namespace rw::detail

#include <xtensor/xarray.hpp>

namespace rw::detail {

// Recycled storage for small arrays. Allocating the data of an xarray is an aligned malloc
// (posix_memalign, not served by glibc's tcache) and on tiny ops it was a quarter of all the time;
// a TensorImpl hands its small value back here when it dies and the element-wise ops take their
// outputs from here. Bounded in total; bigger arrays always go to the allocator.
template <class T>
class ArrayCache {
public:
    static constexpr std::size_t kMaxElements = 64;

    ~ArrayCache() { destroyed_ = true; }

    static xt::xarray<T> take(const typename xt::xarray<T>::shape_type& shape) {
        std::size_t n = 1;
        for (std::size_t extent : shape) n *= extent;
        if (!destroyed_ && n > 0 && n <= kMaxElements) {
            auto& bin = local().bins_[n];
            if (!bin.empty()) {
                xt::xarray<T> array = std::move(bin.back());
                bin.pop_back();
                --local().count_;
                array.resize(shape);  // same number of elements: no reallocation
                return array;
            }
        }
        return xt::xarray<T>::from_shape(shape);
    }

    static void give(xt::xarray<T>&& array) {
        const std::size_t n = array.size();
        if (destroyed_ || n == 0 || n > kMaxElements) return;
        auto& cache = local();
        if (cache.count_ >= kMaxArrays) return;
        cache.bins_[n].push_back(std::move(array));
        ++cache.count_;
    }

private:
    static constexpr std::size_t kMaxArrays = 8192;
    static ArrayCache& local() {
        thread_local ArrayCache cache;
        return cache;
    }
    std::vector<xt::xarray<T>> bins_[kMaxElements + 1];
    std::size_t count_ = 0;
    static inline thread_local bool destroyed_ = false;
};

}  // namespace rw::detail
