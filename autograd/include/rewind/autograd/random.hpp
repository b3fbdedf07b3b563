#pragma once
// A seedable random generator whose full state can be saved and restored, so dropout masks
// and initialisation are reproducible and a resumed training run draws the same numbers.

#include <cstdint>
#include <random>
#include <sstream>
#include <string>

namespace rw {

class Generator {
public:
    explicit Generator(std::uint64_t seed = 5489u) : engine_(seed) {}

    void seed(std::uint64_t seed) { engine_.seed(seed); }
    std::mt19937_64& engine() { return engine_; }

    double uniform(double low = 0.0, double high = 1.0) {
        return std::uniform_real_distribution<double>(low, high)(engine_);
    }
    double normal(double mean = 0.0, double stddev = 1.0) {
        return std::normal_distribution<double>(mean, stddev)(engine_);
    }

    // The engine's complete state as text (the standard's stream format for mersenne_twister).
    std::string state() const {
        std::ostringstream out;
        out << engine_;
        return out.str();
    }
    void set_state(const std::string& state) {
        std::istringstream in(state);
        std::mt19937_64 restored;
        in >> restored;
        if (in.fail()) throw std::invalid_argument("Generator::set_state: not a generator state");
        engine_ = restored;
    }

private:
    std::mt19937_64 engine_;
};

}  // namespace rw
