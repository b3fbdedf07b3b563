#include "rewind/dist/replicas.hpp"

#include <atomic>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <unistd.h>

namespace rw::dist {

namespace {

struct Fnv1a {
    std::uint64_t state = 14695981039346656037ull;
    void add(const void* data, std::size_t bytes) {
        const auto* p = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < bytes; ++i) state = (state ^ p[i]) * 1099511628211ull;
    }
    void add(std::uint64_t value) { add(&value, sizeof value); }
};

// Names and shapes only: what must agree before values can be broadcast.
template <class T>
std::uint64_t layout_hash(const nn::NamedTensors<T>& parameters) {
    Fnv1a hash;
    for (const auto& [name, tensor] : parameters) {
        hash.add(name.data(), name.size() + 1);
        for (std::size_t extent : tensor.shape()) hash.add(extent);
        hash.add(~0ull);
    }
    return hash.state;
}

// The file's bytes, or an error message.
std::string read_file(const std::filesystem::path& file, std::string& error) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        error = fmt::format("{}: checkpoint: cannot open for reading", file.string());
        return {};
    }
    std::ostringstream contents;
    contents << in.rdbuf();
    if (in.bad()) error = fmt::format("{}: checkpoint: read failed", file.string());
    return contents.str();
}

}  // namespace

template <class T>
void require_same_layout(const Communicator& comm, const nn::NamedTensors<T>& parameters, const char* who, int root) {
    const auto layouts = comm.all_gather(layout_hash(parameters));
    for (int r = 0; r < comm.size(); ++r)
        if (layouts[std::size_t(r)] != layouts[std::size_t(root)])
            throw MpiError(fmt::format("{}: rank {} has other parameter names or shapes than rank {}", who, r, root));
}

template <class T>
void broadcast_parameters(const Communicator& comm, const nn::NamedTensors<T>& parameters, int root) {
    require_same_layout(comm, parameters, "broadcast_parameters", root);
    for (const auto& [name, tensor] : parameters) {
        Tensor<T> handle = tensor;
        auto& value = handle.mutable_value();
        comm.broadcast(value.data(), value.size() * sizeof(T), root);
    }
}

template <class T>
std::uint64_t parameter_hash(const nn::NamedTensors<T>& parameters) {
    Fnv1a hash;
    hash.add(layout_hash(parameters));
    for (const auto& named : parameters) hash.add(named.second.value().data(), named.second.size() * sizeof(T));
    return hash.state;
}

std::string ReplicaCheck::to_string() const {
    if (identical) return fmt::format("parameters identical on {} ranks (hash {:016x})", hashes.size(), hashes.at(0));
    std::string differing;
    for (std::size_t r = 1; r < hashes.size(); ++r)
        if (hashes[r] != hashes[0]) differing += fmt::format("{}{}", differing.empty() ? "" : ", ", r);
    return fmt::format("parameters differ from rank 0's on rank(s) {}", differing);
}

template <class T>
ReplicaCheck check_replicas(const Communicator& comm, const nn::NamedTensors<T>& parameters) {
    ReplicaCheck check;
    check.hashes = comm.all_gather(parameter_hash(parameters));
    for (auto hash : check.hashes) check.identical = check.identical && hash == check.hashes[0];
    return check;
}

template <class T>
void save_checkpoint(const Communicator& comm, const nn::Checkpoint<T>& checkpoint, const std::filesystem::path& file,
                     const std::map<std::string, std::string>& user, int root) {
    std::string error;
    if (comm.is_root(root)) {
        try {
            checkpoint.save(file, user);
        } catch (const std::exception& e) {
            error = e.what();
        }
    }
    comm.agree_on_error(error);
}

template <class T>
std::map<std::string, std::string> load_checkpoint(const Communicator& comm, nn::Checkpoint<T>& checkpoint,
                                                   const std::filesystem::path& file, int root) {
    std::string error, bytes;
    if (comm.is_root(root)) bytes = read_file(file, error);
    comm.agree_on_error(error);
    bytes = comm.broadcast(std::move(bytes), root);

    // Checkpoint loads from a file: each rank writes the bytes to a private temporary one.
    static std::atomic<unsigned> counter{0};
    const auto scratch = std::filesystem::temp_directory_path() /
                         fmt::format("rewind-checkpoint-{}-{}-{}.safetensors", ::getpid(), comm.rank(), counter++);
    std::map<std::string, std::string> user;
    try {
        {
            std::ofstream out(scratch, std::ios::binary | std::ios::trunc);
            out.write(bytes.data(), std::streamsize(bytes.size()));
            if (!out.flush()) throw std::runtime_error(fmt::format("{}: cannot write a scratch copy", scratch.string()));
        }
        try {
            user = checkpoint.load(scratch);
        } catch (const std::exception& e) {
            // Name the real file, not the scratch copy.
            std::string text = e.what();
            for (auto at = text.find(scratch.string()); at != std::string::npos; at = text.find(scratch.string()))
                text.replace(at, scratch.string().size(), file.string());
            throw std::runtime_error(text);
        }
    } catch (const std::exception& e) {
        error = e.what();
    }
    std::error_code ignored;
    std::filesystem::remove(scratch, ignored);
    comm.agree_on_error(error);
    return user;
}

template void require_same_layout(const Communicator&, const nn::NamedTensors<float>&, const char*, int);
template void broadcast_parameters(const Communicator&, const nn::NamedTensors<float>&, int);
template std::uint64_t parameter_hash(const nn::NamedTensors<float>&);
template ReplicaCheck check_replicas(const Communicator&, const nn::NamedTensors<float>&);
template void save_checkpoint(const Communicator&, const nn::Checkpoint<float>&, const std::filesystem::path&,
                              const std::map<std::string, std::string>&, int);
template std::map<std::string, std::string> load_checkpoint(const Communicator&, nn::Checkpoint<float>&,
                                                            const std::filesystem::path&, int);
template void require_same_layout(const Communicator&, const nn::NamedTensors<double>&, const char*, int);
template void broadcast_parameters(const Communicator&, const nn::NamedTensors<double>&, int);
template std::uint64_t parameter_hash(const nn::NamedTensors<double>&);
template ReplicaCheck check_replicas(const Communicator&, const nn::NamedTensors<double>&);
template void save_checkpoint(const Communicator&, const nn::Checkpoint<double>&, const std::filesystem::path&,
                              const std::map<std::string, std::string>&, int);
template std::map<std::string, std::string> load_checkpoint(const Communicator&, nn::Checkpoint<double>&,
                                                            const std::filesystem::path&, int);

}  // namespace rw::dist
