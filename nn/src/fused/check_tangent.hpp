#pragma once
// Private to nn/: check_fused_cell's check of a cell's optional tangent rules (check_tangent.cpp).

#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include <rewind/autograd/random.hpp>

#include "rewind/nn/fused/check.hpp"
#include "rewind/nn/fused/cell_rules.hpp"

namespace rw::nn::fused::detail {

// The cell's step() over the sequence on the tape (prepare_input, then step by step in the
// direction's order), finished rows keeping their state and giving zeros: output, final states.
std::vector<Tensor<double>> tape_sequence(const RecurrentCell<double>& cell, const Tensor<double>& x,
                                          const std::vector<Tensor<double>>& initial,
                                          const std::vector<std::int64_t>& lengths, bool reverse);

// One layer-direction on the check's data (x, initial states, lengths; dy: the loss's weights of
// the output and the final states): the sweeps' J v and ∇²<dy, F> v + Jᵀ u for random v, u drawn
// from g, against the cell's step() on the tape. Appends one difference per output and per op
// input and returns "", or returns why the sweeps do not cover the configuration.
std::string check_tangent_rules(const RecurrentCell<double>& cell, const CellRules<double>& rules,
                                const xt::xarray<double>& x, const std::vector<xt::xarray<double>>& initial,
                                const std::vector<std::int64_t>& lengths, bool reverse,
                                const std::vector<xt::xarray<double>>& dy, Generator& g,
                                std::vector<TensorDifference>& differences);

}  // namespace rw::nn::fused::detail
