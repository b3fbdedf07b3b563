#pragma once
// The MPI communicator data-parallel training runs on: RAII start and end of MPI, rank, size, a
// barrier, and the few small collectives the rest of distributed/ builds on. Every MPI failure becomes
// an MpiError naming the call and MPI's own message.
//
// Threads: MPI is asked for MPI_THREAD_FUNNELED (only the thread that started MPI calls it).
// rewind's backward runs on the calling thread, so gradient hooks that start all-reduces are
// on the main thread as long as training is.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <mpi.h>

namespace rw::dist {

struct MpiError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Throws MpiError "<call>: <MPI's error string>" unless code is MPI_SUCCESS.
void check_mpi(int code, const char* call);

class Communicator {
public:
    // Starts MPI (MPI_Init_thread, MPI_THREAD_FUNNELED) unless it is running already, and works
    // on a duplicate of MPI_COMM_WORLD; MPI is finalised when this object ends if it started it.
    // Without mpirun this is a world of one process (MPI's singleton start).
    Communicator(int* argc = nullptr, char*** argv = nullptr);
    // Works on a duplicate of an existing communicator (MPI already initialised by the caller
    // with MPI_THREAD_FUNNELED or better), so its messages never mix with the caller's.
    explicit Communicator(MPI_Comm comm);
    ~Communicator();
    Communicator(const Communicator&) = delete;
    Communicator& operator=(const Communicator&) = delete;

    int rank() const { return rank_; }
    int size() const { return size_; }
    bool is_root(int root = 0) const { return rank_ == root; }
    MPI_Comm comm() const { return comm_; }
    void barrier() const;
    // Ends every process of the job (MPI_Abort): for an error on one rank that the others,
    // waiting in a collective, could never learn of.
    [[noreturn]] void abort(int code = 1) const;

    // Small collectives; every rank must call them in the same order.
    double sum(double value) const;
    bool any(bool flag) const;
    std::vector<std::uint64_t> all_gather(std::uint64_t value) const;
    void broadcast(void* data, std::size_t bytes, int root = 0) const;  // any size (sent in pieces)
    std::string broadcast(std::string text, int root = 0) const;
    // Throws MpiError with `message` on every rank when any rank's `message` is non-empty (the
    // lowest such rank's message, prefixed with its rank), so no rank goes on alone.
    void agree_on_error(const std::string& message) const;

private:
    void attach(MPI_Comm comm);
    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    bool finalize_ = false;
};

// MPI's datatype of float and double.
template <class T>
MPI_Datatype mpi_type();

}  // namespace rw::dist
