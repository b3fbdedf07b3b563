#pragma once
// Keeping the model the same on every rank: one rank's parameters broadcast to all, a check that
// every rank holds identical parameters, and checkpoints written by one rank and loaded by all.
//
// rewind's modules keep all their state in named parameters (state_dict holds exactly these),
// so the parameters are everything a replica needs; a checkpoint adds optimizer, scheduler and
// generator state (nn::Checkpoint).

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <rewind/nn/module.hpp>
#include <rewind/nn/train/checkpoint.hpp>

#include "rewind/dist/communicator.hpp"

namespace rw::dist {

// Copies the root's parameter values to every rank. The names and shapes must agree on all
// ranks (checked first: MpiError naming the first rank whose model differs).
template <class T>
void broadcast_parameters(const Communicator& comm, const nn::NamedTensors<T>& parameters, int root = 0);
template <class T>
void broadcast_parameters(const Communicator& comm, const nn::Module<T>& module, int root = 0) {
    broadcast_parameters(comm, module.named_parameters(), root);
}

// Throws MpiError naming `who` and the first rank whose parameter names or shapes differ from
// the root's (one all-gather of a hash of names and shapes).
template <class T>
void require_same_layout(const Communicator& comm, const nn::NamedTensors<T>& parameters, const char* who, int root = 0);

// A 64-bit FNV-1a hash of the names, shapes and value bytes of `parameters`.
template <class T>
std::uint64_t parameter_hash(const nn::NamedTensors<T>& parameters);

struct ReplicaCheck {
    bool identical = true;
    std::vector<std::uint64_t> hashes;  // one per rank
    std::string to_string() const;      // "identical on 3 ranks" or which ranks differ from rank 0
};

// Compares parameter_hash across ranks (one all-gather of 8 bytes per rank).
template <class T>
ReplicaCheck check_replicas(const Communicator& comm, const nn::NamedTensors<T>& parameters);

// The root saves the checkpoint atomically; every rank returns only when it is written, and all
// throw the root's error if saving failed.
template <class T>
void save_checkpoint(const Communicator& comm, const nn::Checkpoint<T>& checkpoint, const std::filesystem::path& file,
                     const std::map<std::string, std::string>& user = {}, int root = 0);

// The root reads the file and sends its bytes to every rank, so the other machines need not see
// the file; every rank then loads the same bytes with nn::Checkpoint's strict validation. Any
// rank's failure is thrown on all (MpiError naming the rank and the problem). Returns the
// checkpoint's user entries.
template <class T>
std::map<std::string, std::string> load_checkpoint(const Communicator& comm, nn::Checkpoint<T>& checkpoint,
                                                   const std::filesystem::path& file, int root = 0);

}  // namespace rw::dist
