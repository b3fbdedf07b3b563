#pragma once
// Learning-rate schedules with torch.optim.lr_scheduler's semantics (StepLR, CosineAnnealingLR,
// ReduceLROnPlateau in mode "min" with a relative threshold). A scheduler changes the
// optimizer's learning rate in place; call step() once per epoch (or per chosen interval).
// Its counters are saveable (state() / load_state()) so a resumed run schedules the same.

#include <cstddef>
#include <map>
#include <string>

#include "rewind/nn/train/optim.hpp"

namespace rw::nn {

class Scheduler {
public:
    explicit Scheduler(LearningRate& optimizer) : optimizer_(optimizer) {}
    virtual ~Scheduler() = default;
    virtual std::string kind() const = 0;
    double lr() const { return optimizer_.lr(); }

    // "kind" and every counter as exact decimal text.
    std::map<std::string, std::string> state() const;
    // Throws SafetensorsError naming `source` on a different kind, a missing, unexpected or
    // unparsable entry.
    void validate_state(const std::map<std::string, std::string>& state, const std::string& source) const;
    // Validates first: on failure the scheduler is unchanged.
    void load_state(const std::map<std::string, std::string>& state, const std::string& source);

protected:
    virtual std::map<std::string, double> fields() const = 0;
    virtual void set_fields(const std::map<std::string, double>& fields) = 0;
    LearningRate& optimizer_;

private:
    std::map<std::string, double> parse(const std::map<std::string, std::string>& state, const std::string& source) const;
};

// Multiplies the learning rate by gamma every step_size steps.
class StepDecay : public Scheduler {
public:
    StepDecay(LearningRate& optimizer, std::size_t step_size, double gamma = 0.1);
    void step();
    std::string kind() const override { return "step_decay"; }

protected:
    std::map<std::string, double> fields() const override { return {{"last_epoch", double(last_epoch_)}}; }
    void set_fields(const std::map<std::string, double>& fields) override;

private:
    std::size_t step_size_;
    double gamma_;
    std::size_t last_epoch_ = 0;
};

// lr_e = eta_min + (base_lr - eta_min) (1 + cos(pi e / t_max)) / 2, computed with PyTorch's
// recursive form (so it composes with other changes to the rate as torch's does); past t_max the
// rate rises again (a cosine, not a clamp), as in PyTorch.
class CosineAnnealing : public Scheduler {
public:
    CosineAnnealing(LearningRate& optimizer, std::size_t t_max, double eta_min = 0.0);
    void step();
    std::string kind() const override { return "cosine_annealing"; }

protected:
    std::map<std::string, double> fields() const override;
    void set_fields(const std::map<std::string, double>& fields) override;

private:
    std::size_t t_max_;
    double eta_min_;
    double base_lr_;
    std::size_t last_epoch_ = 0;
};

struct PlateauOptions {
    double factor = 0.1;       // new_lr = max(lr * factor, min_lr)
    std::size_t patience = 10; // bad epochs tolerated before reducing
    double threshold = 1e-4;   // improvement means metric < best * (1 - threshold)
    std::size_t cooldown = 0;  // epochs after a reduction during which bad epochs are not counted
    double min_lr = 0.0;
    double eps = 1e-8;         // reductions smaller than this are skipped
};

// Reduces the learning rate when a metric to minimise stops improving.
class ReduceOnPlateau : public Scheduler {
public:
    ReduceOnPlateau(LearningRate& optimizer, const PlateauOptions& options = {});
    // Returns true when this step reduced the learning rate.
    bool step(double metric);
    std::string kind() const override { return "reduce_on_plateau"; }
    double best() const { return best_; }
    std::size_t bad_epochs() const { return bad_epochs_; }

protected:
    std::map<std::string, double> fields() const override;
    void set_fields(const std::map<std::string, double>& fields) override;

private:
    PlateauOptions options_;
    double best_;
    std::size_t bad_epochs_ = 0;
    std::size_t cooldown_counter_ = 0;
    std::size_t last_epoch_ = 0;
};

}  // namespace rw::nn
