#include "rewind/nn/train/schedule.hpp"

#include <cmath>
#include <limits>
#include <numbers>

#include <fmt/format.h>

namespace rw::nn {

std::map<std::string, std::string> Scheduler::state() const {
    std::map<std::string, std::string> out{{"kind", kind()}};
    for (const auto& [key, value] : fields()) out[key] = format_exact(value);
    return out;
}

std::map<std::string, double> Scheduler::parse(const std::map<std::string, std::string>& state,
                                               const std::string& source) const {
    auto reject = [&](const std::string& what) {
        throw SafetensorsError(fmt::format("{}: scheduler state: {}", source, what));
    };
    auto kind_entry = state.find("kind");
    if (kind_entry == state.end()) reject("'kind' is missing");
    if (kind_entry->second != kind()) reject(fmt::format("saved by '{}', loading into '{}'", kind_entry->second, kind()));
    std::map<std::string, double> values = fields();
    for (auto& [key, value] : values) {
        auto found = state.find(key);
        if (found == state.end()) reject(fmt::format("'{}' is missing", key));
        const auto parsed = parse_exact(found->second);
        const bool counter = key == "last_epoch" || key == "bad_epochs" || key == "cooldown_counter";
        if (!parsed || std::isnan(*parsed) || (counter && !(*parsed >= 0 && std::floor(*parsed) == *parsed && *parsed < 1e15)))
            reject(fmt::format("'{}' is not a valid value: '{}'", key, found->second));
        value = *parsed;
    }
    for (const auto& entry : state)
        if (entry.first != "kind" && !values.count(entry.first)) reject(fmt::format("unexpected entry '{}'", entry.first));
    return values;
}

void Scheduler::validate_state(const std::map<std::string, std::string>& state, const std::string& source) const {
    parse(state, source);
}

void Scheduler::load_state(const std::map<std::string, std::string>& state, const std::string& source) {
    set_fields(parse(state, source));
}

// ---- StepDecay ----

StepDecay::StepDecay(LearningRate& optimizer, std::size_t step_size, double gamma)
    : Scheduler(optimizer), step_size_(step_size), gamma_(gamma) {
    if (step_size == 0) throw std::invalid_argument("StepDecay: step_size must be at least 1");
}

void StepDecay::step() {
    ++last_epoch_;
    if (last_epoch_ % step_size_ == 0) optimizer_.set_lr(optimizer_.lr() * gamma_);
}

void StepDecay::set_fields(const std::map<std::string, double>& fields) {
    last_epoch_ = std::size_t(fields.at("last_epoch"));
}

// ---- CosineAnnealing ----

CosineAnnealing::CosineAnnealing(LearningRate& optimizer, std::size_t t_max, double eta_min)
    : Scheduler(optimizer), t_max_(t_max), eta_min_(eta_min), base_lr_(optimizer.lr()) {
    if (t_max == 0) throw std::invalid_argument("CosineAnnealing: t_max must be at least 1");
}

void CosineAnnealing::step() {
    ++last_epoch_;
    const double pi = std::numbers::pi, t = double(t_max_), e = double(last_epoch_), lr = optimizer_.lr();
    // torch's get_lr(): (e - 1 - t_max) % (2 t_max) == 0 marks the restart of the rising half.
    if ((last_epoch_ + t_max_ - 1) % (2 * t_max_) == 0)
        optimizer_.set_lr(lr + (base_lr_ - eta_min_) * (1 - std::cos(pi / t)) / 2);
    else
        optimizer_.set_lr((1 + std::cos(pi * e / t)) / (1 + std::cos(pi * (e - 1) / t)) * (lr - eta_min_) + eta_min_);
}

std::map<std::string, double> CosineAnnealing::fields() const {
    return {{"last_epoch", double(last_epoch_)}, {"base_lr", base_lr_}};
}

void CosineAnnealing::set_fields(const std::map<std::string, double>& fields) {
    last_epoch_ = std::size_t(fields.at("last_epoch"));
    base_lr_ = fields.at("base_lr");
}

// ---- ReduceOnPlateau ----

ReduceOnPlateau::ReduceOnPlateau(LearningRate& optimizer, const PlateauOptions& options)
    : Scheduler(optimizer), options_(options), best_(std::numeric_limits<double>::infinity()) {
    if (!(options.factor < 1.0) || !(options.factor >= 0))
        throw std::invalid_argument(fmt::format("ReduceOnPlateau: factor must be in [0, 1), got {}", options.factor));
}

bool ReduceOnPlateau::step(double metric) {
    ++last_epoch_;
    if (metric < best_ * (1 - options_.threshold)) {
        best_ = metric;
        bad_epochs_ = 0;
    } else {
        ++bad_epochs_;
    }
    if (cooldown_counter_ > 0) {
        --cooldown_counter_;
        bad_epochs_ = 0;  // bad epochs during cooldown do not count
    }
    if (bad_epochs_ <= options_.patience) return false;
    const double old_lr = optimizer_.lr(), new_lr = std::max(old_lr * options_.factor, options_.min_lr);
    const bool reduced = old_lr - new_lr > options_.eps;
    if (reduced) optimizer_.set_lr(new_lr);
    cooldown_counter_ = options_.cooldown;
    bad_epochs_ = 0;
    return reduced;
}

std::map<std::string, double> ReduceOnPlateau::fields() const {
    return {{"best", best_},
            {"bad_epochs", double(bad_epochs_)},
            {"cooldown_counter", double(cooldown_counter_)},
            {"last_epoch", double(last_epoch_)}};
}

void ReduceOnPlateau::set_fields(const std::map<std::string, double>& fields) {
    best_ = fields.at("best");
    bad_epochs_ = std::size_t(fields.at("bad_epochs"));
    cooldown_counter_ = std::size_t(fields.at("cooldown_counter"));
    last_epoch_ = std::size_t(fields.at("last_epoch"));
}

}  // namespace rw::nn
