#pragma once
// The one table of the built-in cells: name, factory, gate count, state names, fused rules.
// Layers (make_recurrent), the CLI (--cell, bench, gradcheck, check-fused) and the benchmark
// read it; no other place knows the cells by name.

#include <string>
#include <vector>

#include "rewind/nn/fused/cell_rules.hpp"
#include "rewind/nn/layers/cell.hpp"
#include "rewind/nn/layers/cells.hpp"

namespace rw::nn {

struct CellInfo {
    std::string name;                      // the cell's kind(), e.g. "lstm"
    std::string description;
    std::size_t gates = 1;                 // G: blocks of weight_ih's rows
    std::vector<std::string> state_names;  // e.g. {"h", "c"}
    std::vector<std::string> gate_names;   // one per block, in weight_ih's order
    bool fused = false;                    // has hand-written fused rules
    fused::CellLayout layout;              // the fused rules' layout, when fused (without projection)
    bool supports_projection = false;      // takes CellOptions::proj_size (PyTorch's LSTM projections)
};

const std::vector<CellInfo>& cell_table();
std::vector<std::string> cell_names();
// The entry of that name; std::invalid_argument naming the known cells otherwise.
const CellInfo& cell_info(const std::string& name);

// Makes the named built-in cell for one layer and direction (options: bias, LSTM's proj_size).
template <class T>
CellFactory<T> cell_factory(const std::string& name, const CellInit& init = {}, const CellOptions& options = {});

}  // namespace rw::nn
