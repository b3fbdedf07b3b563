#include "rewind/nn/layers/cell_table.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace rw::nn {

namespace {

template <class T>
using Maker = std::shared_ptr<RecurrentCell<T>> (*)(std::size_t, std::size_t, Generator&, const CellInit&,
                                                    const CellOptions&);

template <class T>
std::shared_ptr<RecurrentCell<T>> make_rnn_tanh(std::size_t in, std::size_t hidden, Generator& g, const CellInit& init,
                                                 const CellOptions& options) {
    return std::make_shared<RNNCell<T>>(in, hidden, Nonlinearity::tanh, g, init, options);
}
template <class T>
std::shared_ptr<RecurrentCell<T>> make_rnn_relu(std::size_t in, std::size_t hidden, Generator& g, const CellInit& init,
                                                 const CellOptions& options) {
    return std::make_shared<RNNCell<T>>(in, hidden, Nonlinearity::relu, g, init, options);
}
template <class T>
std::shared_ptr<RecurrentCell<T>> make_lstm_cell(std::size_t in, std::size_t hidden, Generator& g, const CellInit& init,
                                                 const CellOptions& options) {
    return std::make_shared<LSTMCell<T>>(in, hidden, g, init, options);
}
template <class T>
std::shared_ptr<RecurrentCell<T>> make_gru_cell(std::size_t in, std::size_t hidden, Generator& g, const CellInit& init,
                                                 const CellOptions& options) {
    return std::make_shared<GRUCell<T>>(in, hidden, g, init, options);
}

struct Row {
    Maker<float> make_float;
    Maker<double> make_double;
    const char* description;
};

// The rows; each entry's name, states and fused layout are read off a cell it makes, so the
// table cannot disagree with the cells.
const std::vector<Row>& rows() {
    static const std::vector<Row> table{
        {make_rnn_tanh<float>, make_rnn_tanh<double>, "Elman RNN, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)"},
        {make_rnn_relu<float>, make_rnn_relu<double>, "Elman RNN, h' = relu(W_ih x + b_ih + W_hh h + b_hh)"},
        {make_lstm_cell<float>, make_lstm_cell<double>, "LSTM (PyTorch's gate order i, f, g, o)"},
        {make_gru_cell<float>, make_gru_cell<double>, "GRU (PyTorch's, b_hn inside the reset product)"},
    };
    return table;
}

}  // namespace

const std::vector<CellInfo>& cell_table() {
    static const std::vector<CellInfo> table = [] {
        std::vector<CellInfo> infos;
        for (const Row& row : rows()) {
            Generator generator(0);
            const auto cell = row.make_double(1, 1, generator, {}, {});
            CellInfo info;
            info.name = cell->kind();
            info.description = row.description;
            info.state_names = cell->state_names();
            // Every built-in cell has rules (asserted in test_fused); they know the gate blocks.
            const auto* rules = cell->usable_fused_rules();
            info.fused = rules != nullptr;
            if (rules) {
                info.layout = rules->layout();
                info.gates = info.layout.gates;
                info.gate_names = rules->gate_names();
            }
            // A cell takes proj_size when it then really narrows h (the others ignore the option,
            // and the layer refuses the mismatch).
            const auto projected = row.make_double(1, 2, generator, {}, {.proj_size = 1});
            info.supports_projection = projected->state_size(0) == 1;
            infos.push_back(std::move(info));
        }
        return infos;
    }();
    return table;
}

std::vector<std::string> cell_names() {
    std::vector<std::string> names;
    for (const auto& info : cell_table()) names.push_back(info.name);
    return names;
}

namespace {

std::size_t index_of(const std::string& name) {
    const auto& table = cell_table();
    for (std::size_t i = 0; i < table.size(); ++i)
        if (table[i].name == name) return i;
    throw std::invalid_argument(fmt::format("unknown cell '{}' (expected one of {})", name, fmt::join(cell_names(), ", ")));
}

}  // namespace

const CellInfo& cell_info(const std::string& name) { return cell_table()[index_of(name)]; }

template <class T>
CellFactory<T> cell_factory(const std::string& name, const CellInit& init, const CellOptions& options) {
    const Row& row = rows()[index_of(name)];
    Maker<T> make;
    if constexpr (std::is_same_v<T, float>) make = row.make_float;
    else make = row.make_double;
    return [make, init, options](const CellSite& site, Generator& generator) {
        return make(site.input_size, site.hidden_size, generator, init, options);
    };
}

template CellFactory<float> cell_factory<float>(const std::string&, const CellInit&, const CellOptions&);
template CellFactory<double> cell_factory<double>(const std::string&, const CellInit&, const CellOptions&);

}  // namespace rw::nn
