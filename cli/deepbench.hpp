#pragma once
// `rewind bench --deepbench training|inference`: DeepBench's RNN shapes, rewind's fused path and
// oneDNN's RNN primitives side by side (deepbench.cpp).

#include <string>

namespace rw::cli {

struct DeepbenchRequest {
    std::string kind;  // "training" or "inference"; empty: not asked for
    int rounds = 3;    // timed rounds, alternating rewind and oneDNN, after one untimed
    bool quick = false;
    bool json = false;
    std::string png;
    int threads = 1;
};

int run_deepbench(const DeepbenchRequest& request);

}  // namespace rw::cli
