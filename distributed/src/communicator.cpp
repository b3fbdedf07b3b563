#include "rewind/dist/communicator.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include <fmt/format.h>

namespace rw::dist {

void check_mpi(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
    throw MpiError(fmt::format("{}: {}", call, length ? std::string(text, std::size_t(length)) : fmt::format("MPI error {}", code)));
}

Communicator::Communicator(int* argc, char*** argv) {
    int initialized = 0;
    check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) {
        int provided = 0;
        check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        finalize_ = true;
        if (provided < MPI_THREAD_FUNNELED) {
            MPI_Finalize();
            throw MpiError("MPI_Init_thread: this MPI does not provide MPI_THREAD_FUNNELED");
        }
    }
    attach(MPI_COMM_WORLD);
}

Communicator::Communicator(MPI_Comm comm) {
    int initialized = 0, provided = 0;
    check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) throw MpiError("Communicator(MPI_Comm): MPI is not initialised");
    check_mpi(MPI_Query_thread(&provided), "MPI_Query_thread");
    if (provided < MPI_THREAD_FUNNELED)
        throw MpiError("Communicator(MPI_Comm): MPI was initialised below MPI_THREAD_FUNNELED");
    attach(comm);
}

void Communicator::attach(MPI_Comm comm) {
    try {
        check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
        // Errors on our communicator come back as codes (and become MpiError), not aborts.
        check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
        check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    } catch (...) {
        if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
        if (finalize_) MPI_Finalize();
        throw;
    }
}

Communicator::~Communicator() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (finalize_) MPI_Finalize();
}

void Communicator::barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

void Communicator::abort(int code) const {
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] should it ever
}

double Communicator::sum(double value) const {
    double total = 0;
    check_mpi(MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, comm_), "MPI_Allreduce");
    return total;
}

bool Communicator::any(bool flag) const {
    int local = flag ? 1 : 0, global = 0;
    check_mpi(MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
    return global != 0;
}

std::vector<std::uint64_t> Communicator::all_gather(std::uint64_t value) const {
    std::vector<std::uint64_t> values(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&value, 1, MPI_UINT64_T, values.data(), 1, MPI_UINT64_T, comm_), "MPI_Allgather");
    return values;
}

void Communicator::broadcast(void* data, std::size_t bytes, int root) const {
    auto* at = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
        const std::size_t piece = std::min<std::size_t>(bytes - done, INT_MAX);
        check_mpi(MPI_Bcast(at + done, int(piece), MPI_BYTE, root, comm_), "MPI_Bcast");
        done += piece;
    }
}

std::string Communicator::broadcast(std::string text, int root) const {
    std::uint64_t length = text.size();
    broadcast(&length, sizeof length, root);
    text.resize(length);
    broadcast(text.data(), length, root);
    return text;
}

void Communicator::agree_on_error(const std::string& message) const {
    const auto failed = all_gather(message.empty() ? 0 : 1);
    const auto first = std::find(failed.begin(), failed.end(), 1);
    if (first == failed.end()) return;
    const int culprit = int(first - failed.begin());
    const std::string text = broadcast(message, culprit);
    throw MpiError(size_ == 1 ? text : fmt::format("rank {}: {}", culprit, text));
}

template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }

}  // namespace rw::dist
