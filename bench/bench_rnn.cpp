// One training step of a recurrent layer (forward, loss = sum of the output, full backward to
// the input and every weight), float32, timed on the fused path, on the generic per-step tape,
// optionally on oneDNN's own RNN primitives, and against rw::blas::gemm on a comparable size as
// the machine's practical peak. Everything is interleaved in one process: each round runs every
// contender once, so load from other processes hits them alike.
//
//   bench_rnn --cell {rnn_tanh|rnn_relu|lstm|gru} --seq-len T --batch B --input-size I --hidden-size H
//             [--layers L] [--bidirectional] [--threads N] [--repeats R] [--peer onednn] [--json]
//   bench_rnn --suite [--peer onednn] [--json]     (the standard sizes, one line per case)
//
// FLOPs of a step: 3 * 2 * T * B * G * H * (I + H) per layer and direction (the forward GEMMs,
// and twice that for backward), G = 4 LSTM, 3 GRU, 1 RNN. The sgemm reference is
// [T*B, I+H] x [I+H, G*H], the shape of all the forward GEMMs of a step fused into one.
//
// Targets (reported, not asserted): T=100,B=1,I=H=128 LSTM/GRU at least as fast as oneDNN;
// T=100,B=32,I=H=256 >= 0.85x oneDNN; T=50,B=64,I=H=1024 >= 85% of sgemm peak; fused >= 3x
// generic at B=1.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include <rewind/autograd.hpp>
#include <rewind/nn.hpp>
#include <rewind/nn/fused.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using rw::Tensor;
using namespace rw::nn;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
    if (values.empty()) return NAN;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

volatile float sink = 0;

struct Config {
    std::string cell = "lstm";
    std::size_t steps = 100, batch = 32, input = 256, hidden = 256, layers = 1;
    bool bidirectional = false;
    int threads = 1;
    int repeats = 10;
    int warmup = 2;
    std::string peer;
    bool json = false;
    bool skip_generic = false;
};

std::size_t gate_count(const std::string& cell) {
    return cell == "lstm" ? 4 : cell == "gru" ? 3 : 1;
}

// ---- rewind: the same layer on either path ----

class RewindStep {
public:
    explicit RewindStep(const Config& c) : c_(c) {
        RecurrentOptions options{.input_size = c.input, .hidden_size = c.hidden, .num_layers = c.layers,
                                 .bidirectional = c.bidirectional, .seed = 1};
        layer_ = make_recurrent<float>(c.cell, options);
        rw::Generator g(2);
        xt::xarray<float> x = xt::xarray<float>::from_shape({c.steps, c.batch, c.input});
        for (auto& v : x) v = static_cast<float>(g.uniform(-1, 1));
        x_ = Tensor<float>(std::move(x), true);
    }

    // One training step; returns the loss so nothing is optimised away.
    float run(ExecutionPath path) {
        layer_->set_path(path);
        layer_->zero_grad();
        x_.zero_grad();
        auto result = layer_->forward(x_);
        Tensor<float> loss = rw::sum(result.output);
        loss.backward();
        return loss.item() + x_.grad().value()(0);
    }

    Recurrent<float>& layer() { return *layer_; }
    const Tensor<float>& x() const { return x_; }

private:
    Config c_;
    std::shared_ptr<Recurrent<float>> layer_;
    Tensor<float> x_;
};

// ---- oneDNN's RNN primitives with the same sizes (one layer) ----

class OnednnStep {
public:
    OnednnStep(const Config& c, Recurrent<float>& layer) : c_(c), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
        using dt = dnnl::memory::data_type;
        using tag = dnnl::memory::format_tag;
        using dims = dnnl::memory::dims;
        const auto T = dnnl::memory::dim(c.steps), B = dnnl::memory::dim(c.batch), I = dnnl::memory::dim(c.input),
                   H = dnnl::memory::dim(c.hidden), D = dnnl::memory::dim(c.bidirectional ? 2 : 1);
        G_ = dnnl::memory::dim(gate_count(c.cell));
        bias_gates_ = c.cell == "gru" ? 4 : G_;  // linear-before-reset GRU: b_hn is a fourth bias gate
        const auto direction = c.bidirectional ? dnnl::rnn_direction::bidirectional_concat
                                               : dnnl::rnn_direction::unidirectional_left2right;
        auto md = [](const dims& d, tag t) { return dnnl::memory::desc(d, dt::f32, t); };
        src_layer_md_ = md({T, B, I}, tag::tnc);
        iter_md_ = md({1, D, B, H}, tag::ldnc);
        weights_layer_user_md_ = md({1, D, I, G_, H}, tag::ldigo);
        weights_iter_user_md_ = md({1, D, H, G_, H}, tag::ldigo);
        const auto weights_layer_any = md({1, D, I, G_, H}, tag::any);
        const auto weights_iter_any = md({1, D, H, G_, H}, tag::any);
        bias_md_ = md({1, D, bias_gates_, H}, tag::ldgo);
        dst_layer_md_ = md({T, B, D * H}, tag::tnc);
        const bool lstm = c.cell == "lstm";
        const dnnl::memory::desc none;
        const auto iter_c_md = lstm ? iter_md_ : none;
        const auto fwd_kind = dnnl::prop_kind::forward_training, bwd_kind = dnnl::prop_kind::backward;

        if (lstm) {
            dnnl::lstm_forward::desc fd(fwd_kind, direction, src_layer_md_, iter_md_, iter_c_md, weights_layer_any,
                                        weights_iter_any, bias_md_, dst_layer_md_, iter_md_, iter_c_md);
            auto fpd = dnnl::lstm_forward::primitive_desc(fd, engine_);
            dnnl::lstm_backward::desc bd(bwd_kind, direction, src_layer_md_, iter_md_, iter_c_md, weights_layer_any,
                                         weights_iter_any, bias_md_, dst_layer_md_, iter_md_, iter_c_md, src_layer_md_,
                                         iter_md_, iter_c_md, weights_layer_any, weights_iter_any, bias_md_,
                                         dst_layer_md_, iter_md_, iter_c_md);
            auto bpd = dnnl::lstm_backward::primitive_desc(bd, engine_, fpd);
            setup(fpd, bpd);
            forward_ = dnnl::lstm_forward(fpd);
            backward_ = dnnl::lstm_backward(bpd);
        } else if (c.cell == "gru") {
            dnnl::lbr_gru_forward::desc fd(fwd_kind, direction, src_layer_md_, iter_md_, weights_layer_any,
                                           weights_iter_any, bias_md_, dst_layer_md_, iter_md_);
            auto fpd = dnnl::lbr_gru_forward::primitive_desc(fd, engine_);
            dnnl::lbr_gru_backward::desc bd(bwd_kind, direction, src_layer_md_, iter_md_, weights_layer_any,
                                            weights_iter_any, bias_md_, dst_layer_md_, iter_md_, src_layer_md_,
                                            iter_md_, weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_,
                                            iter_md_);
            auto bpd = dnnl::lbr_gru_backward::primitive_desc(bd, engine_, fpd);
            setup(fpd, bpd);
            forward_ = dnnl::lbr_gru_forward(fpd);
            backward_ = dnnl::lbr_gru_backward(bpd);
        } else {
            const auto activation =
                c.cell == "rnn_relu" ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_tanh;
            dnnl::vanilla_rnn_forward::desc fd(fwd_kind, activation, direction, src_layer_md_, iter_md_,
                                               weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_, iter_md_);
            auto fpd = dnnl::vanilla_rnn_forward::primitive_desc(fd, engine_);
            dnnl::vanilla_rnn_backward::desc bd(bwd_kind, activation, direction, src_layer_md_, iter_md_,
                                                weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_, iter_md_,
                                                src_layer_md_, iter_md_, weights_layer_any, weights_iter_any, bias_md_,
                                                dst_layer_md_, iter_md_);
            auto bpd = dnnl::vanilla_rnn_backward::primitive_desc(bd, engine_, fpd);
            setup(fpd, bpd);
            forward_ = dnnl::vanilla_rnn_forward(fpd);
            backward_ = dnnl::vanilla_rnn_backward(bpd);
        }
        copy_parameters(layer);
        // The loss's gradient (ones) and zero initial states; set_input() brings rewind's input.
        fill(diff_dst_layer_, 1.0f);
        fill(src_iter_, 0.0f);
        fill(src_iter_c_, 0.0f);
        fill(diff_dst_iter_, 0.0f);
        fill(diff_dst_iter_c_, 0.0f);
    }

    void set_input(const float* x) {
        std::memcpy(src_layer_.get_data_handle(), x, src_layer_md_.get_size());
    }

    // One training step: weights to the primitives' layouts (they change every step in
    // training), forward, backward, the weight gradients back to the user layout.
    // Returns {total ms, primitives-only ms}.
    std::pair<double, double> run() {
        const auto start = Clock::now();
        reorder_in();
        const auto primitives = Clock::now();
        forward_.execute(stream_, {{DNNL_ARG_SRC_LAYER, src_layer_}, {DNNL_ARG_SRC_ITER, src_iter_},
                                   {DNNL_ARG_SRC_ITER_C, src_iter_c_}, {DNNL_ARG_WEIGHTS_LAYER, fwd_weights_layer_},
                                   {DNNL_ARG_WEIGHTS_ITER, fwd_weights_iter_}, {DNNL_ARG_BIAS, bias_},
                                   {DNNL_ARG_DST_LAYER, dst_layer_}, {DNNL_ARG_DST_ITER, dst_iter_},
                                   {DNNL_ARG_DST_ITER_C, dst_iter_c_}, {DNNL_ARG_WORKSPACE, workspace_}});
        // The diff weights are accumulated by the primitive: zero them first.
        zero(diff_weights_layer_);
        zero(diff_weights_iter_);
        zero(diff_bias_);
        backward_.execute(
            stream_, {{DNNL_ARG_SRC_LAYER, src_layer_}, {DNNL_ARG_SRC_ITER, src_iter_},
                      {DNNL_ARG_SRC_ITER_C, src_iter_c_}, {DNNL_ARG_WEIGHTS_LAYER, bwd_weights_layer_},
                      {DNNL_ARG_WEIGHTS_ITER, bwd_weights_iter_}, {DNNL_ARG_BIAS, bias_},
                      {DNNL_ARG_DST_LAYER, dst_layer_}, {DNNL_ARG_DST_ITER, dst_iter_},
                      {DNNL_ARG_DST_ITER_C, dst_iter_c_}, {DNNL_ARG_DIFF_SRC_LAYER, diff_src_layer_},
                      {DNNL_ARG_DIFF_SRC_ITER, diff_src_iter_}, {DNNL_ARG_DIFF_SRC_ITER_C, diff_src_iter_c_},
                      {DNNL_ARG_DIFF_WEIGHTS_LAYER, diff_weights_layer_}, {DNNL_ARG_DIFF_WEIGHTS_ITER, diff_weights_iter_},
                      {DNNL_ARG_DIFF_BIAS, diff_bias_}, {DNNL_ARG_DIFF_DST_LAYER, diff_dst_layer_},
                      {DNNL_ARG_DIFF_DST_ITER, diff_dst_iter_}, {DNNL_ARG_DIFF_DST_ITER_C, diff_dst_iter_c_},
                      {DNNL_ARG_WORKSPACE, workspace_}});
        stream_.wait();
        const double primitives_ms = ms_since(primitives);
        reorder_out();
        stream_.wait();
        return {ms_since(start), primitives_ms};
    }

    // The forward output, [T, B, D*H], to check that both libraries compute the same layer.
    const float* output() const { return static_cast<const float*>(dst_layer_.get_data_handle()); }
    const float* diff_input() const { return static_cast<const float*>(diff_src_layer_.get_data_handle()); }

private:
    template <class ForwardPd, class BackwardPd>
    void setup(const ForwardPd& fpd, const BackwardPd& bpd) {
        auto mem = [&](const dnnl::memory::desc& d) { return dnnl::memory(d, engine_); };
        src_layer_ = mem(src_layer_md_);
        src_iter_ = mem(iter_md_);
        src_iter_c_ = mem(iter_md_);
        dst_layer_ = mem(dst_layer_md_);
        dst_iter_ = mem(iter_md_);
        dst_iter_c_ = mem(iter_md_);
        bias_ = mem(bias_md_);
        user_weights_layer_ = mem(weights_layer_user_md_);
        user_weights_iter_ = mem(weights_iter_user_md_);
        fwd_weights_layer_ = mem(fpd.weights_layer_desc());
        fwd_weights_iter_ = mem(fpd.weights_iter_desc());
        bwd_weights_layer_ = mem(bpd.weights_layer_desc());
        bwd_weights_iter_ = mem(bpd.weights_iter_desc());
        workspace_ = mem(fpd.workspace_desc());
        diff_src_layer_ = mem(src_layer_md_);
        diff_src_iter_ = mem(iter_md_);
        diff_src_iter_c_ = mem(iter_md_);
        diff_dst_layer_ = mem(dst_layer_md_);
        diff_dst_iter_ = mem(iter_md_);
        diff_dst_iter_c_ = mem(iter_md_);
        diff_weights_layer_ = mem(bpd.diff_weights_layer_desc());
        diff_weights_iter_ = mem(bpd.diff_weights_iter_desc());
        diff_bias_ = mem(bpd.diff_bias_desc());
        user_diff_weights_layer_ = mem(weights_layer_user_md_);
        user_diff_weights_iter_ = mem(weights_iter_user_md_);
        auto reorder = [](dnnl::memory& from, dnnl::memory& to) -> std::optional<dnnl::reorder> {
            if (from.get_desc() == to.get_desc()) return std::nullopt;
            return dnnl::reorder(from, to);
        };
        to_fwd_layer_ = reorder(user_weights_layer_, fwd_weights_layer_);
        to_fwd_iter_ = reorder(user_weights_iter_, fwd_weights_iter_);
        to_bwd_layer_ = reorder(user_weights_layer_, bwd_weights_layer_);
        to_bwd_iter_ = reorder(user_weights_iter_, bwd_weights_iter_);
        from_diff_layer_ = reorder(diff_weights_layer_, user_diff_weights_layer_);
        from_diff_iter_ = reorder(diff_weights_iter_, user_diff_weights_iter_);
    }

    void reorder_in() {
        auto run = [&](std::optional<dnnl::reorder>& r, dnnl::memory& from, dnnl::memory& to) {
            if (r) r->execute(stream_, from, to);
            else std::memcpy(to.get_data_handle(), from.get_data_handle(), from.get_desc().get_size());
        };
        run(to_fwd_layer_, user_weights_layer_, fwd_weights_layer_);
        run(to_fwd_iter_, user_weights_iter_, fwd_weights_iter_);
        run(to_bwd_layer_, user_weights_layer_, bwd_weights_layer_);
        run(to_bwd_iter_, user_weights_iter_, bwd_weights_iter_);
    }

    void reorder_out() {
        if (from_diff_layer_) from_diff_layer_->execute(stream_, diff_weights_layer_, user_diff_weights_layer_);
        if (from_diff_iter_) from_diff_iter_->execute(stream_, diff_weights_iter_, user_diff_weights_iter_);
    }

    static void fill(dnnl::memory& m, float value) {
        float* p = static_cast<float*>(m.get_data_handle());
        std::fill_n(p, m.get_desc().get_size() / sizeof(float), value);
    }
    static void zero(dnnl::memory& m) { std::memset(m.get_data_handle(), 0, m.get_desc().get_size()); }

    // PyTorch's [G*H, in] weights and [G*H] biases into ldigo / ldgo. oneDNN's GRU gate order is
    // (u = z, r, o = n) against PyTorch's (r, z, n); LSTM's i, f, g, o is the same in both.
    void copy_parameters(Recurrent<float>& layer) {
        const std::size_t G = std::size_t(G_), H = c_.hidden, D = c_.bidirectional ? 2 : 1;
        auto torch_gate = [&](std::size_t g) -> std::size_t {
            if (c_.cell != "gru") return g;
            return g == 0 ? 1 : g == 1 ? 0 : 2;
        };
        float* wl = static_cast<float*>(user_weights_layer_.get_data_handle());
        float* wi = static_cast<float*>(user_weights_iter_.get_data_handle());
        float* bias = static_cast<float*>(bias_.get_data_handle());
        for (std::size_t d = 0; d < D; ++d) {
            const auto& cell = dynamic_cast<const GatedCell<float>&>(layer.cell(0, d));
            const auto& w_ih = cell.weight_ih().value();
            const auto& w_hh = cell.weight_hh().value();
            const auto& b_ih = cell.bias_ih().value();
            const auto& b_hh = cell.bias_hh().value();
            const std::size_t I = c_.input;
            for (std::size_t g = 0; g < G; ++g)
                for (std::size_t h = 0; h < H; ++h) {
                    const std::size_t row = torch_gate(g) * H + h;
                    for (std::size_t i = 0; i < I; ++i) wl[((d * I + i) * G + g) * H + h] = w_ih(row, i);
                    for (std::size_t i = 0; i < H; ++i) wi[((d * H + i) * G + g) * H + h] = w_hh(row, i);
                    float* b = bias + (d * bias_gates_ + g) * H + h;
                    *b = (c_.cell == "gru" && g == 2) ? b_ih(row) : b_ih(row) + b_hh(row);
                }
            if (c_.cell == "gru")
                for (std::size_t h = 0; h < H; ++h) bias[(d * bias_gates_ + 3) * H + h] = b_hh(2 * H + h);
        }
    }

    Config c_;
    dnnl::engine engine_;
    dnnl::stream stream_;
    dnnl::memory::dim G_ = 1, bias_gates_ = 1;
    dnnl::memory::desc src_layer_md_, iter_md_, weights_layer_user_md_, weights_iter_user_md_, bias_md_, dst_layer_md_;
    dnnl::primitive forward_, backward_;
    dnnl::memory src_layer_, src_iter_, src_iter_c_, dst_layer_, dst_iter_, dst_iter_c_, bias_, workspace_;
    dnnl::memory user_weights_layer_, user_weights_iter_, fwd_weights_layer_, fwd_weights_iter_, bwd_weights_layer_,
        bwd_weights_iter_;
    dnnl::memory diff_src_layer_, diff_src_iter_, diff_src_iter_c_, diff_dst_layer_, diff_dst_iter_, diff_dst_iter_c_;
    dnnl::memory diff_weights_layer_, diff_weights_iter_, diff_bias_, user_diff_weights_layer_, user_diff_weights_iter_;
    std::optional<dnnl::reorder> to_fwd_layer_, to_fwd_iter_, to_bwd_layer_, to_bwd_iter_, from_diff_layer_,
        from_diff_iter_;
};

// ---- the sgemm reference ----

class SgemmStep {
public:
    SgemmStep(std::size_t m, std::size_t n, std::size_t k) : m_(m), n_(n), k_(k), a_(m * k), b_(k * n), c_(m * n) {
        rw::Generator g(3);
        for (auto& v : a_) v = static_cast<float>(g.uniform(-1, 1));
        for (auto& v : b_) v = static_cast<float>(g.uniform(-1, 1));
    }
    double run() {
        const auto start = Clock::now();
        rw::blas::gemm(false, false, m_, n_, k_, 1.0f, a_.data(), k_, b_.data(), n_, 0.0f, c_.data(), n_);
        const double ms = ms_since(start);
        sink = sink + c_[0];
        return ms;
    }
    double flops() const { return 2.0 * double(m_) * double(n_) * double(k_); }

private:
    std::size_t m_, n_, k_;
    std::vector<float> a_, b_, c_;
};

// ---- one benchmark case ----

nlohmann::json run_case(const Config& c) {
    rw::blas::set_num_threads(c.threads);
    const std::size_t G = gate_count(c.cell), D = c.bidirectional ? 2 : 1;
    double flops = 0;
    for (std::size_t l = 0; l < c.layers; ++l) {
        const std::size_t in = l == 0 ? c.input : D * c.hidden;
        flops += double(D) * 3.0 * 2.0 * double(c.steps * c.batch * G * c.hidden) * double(in + c.hidden);
    }

    RewindStep rewind(c);
    SgemmStep sgemm(c.steps * c.batch, G * c.hidden, c.input + c.hidden);
    std::unique_ptr<OnednnStep> onednn;
    std::string peer_note;
    double onednn_max_diff = NAN, onednn_max_dx_diff = NAN;
    if (c.peer == "onednn") {
        if (c.layers != 1) {
            peer_note = "oneDNN peer runs one layer only (its stacked layers need I == H); skipped";
        } else {
            onednn = std::make_unique<OnednnStep>(c, rewind.layer());
            onednn->set_input(rewind.x().value().data());
            // Both libraries must compute the same layer: compare the outputs and dL/dx once.
            onednn->run();
            auto& layer = rewind.layer();
            layer.set_path(ExecutionPath::fused);
            layer.zero_grad();
            Tensor<float> x = rewind.x();
            x.zero_grad();
            auto result = layer.forward(x);
            rw::sum(result.output).backward();
            onednn_max_diff = 0;
            onednn_max_dx_diff = 0;
            const auto& out = result.output.value();
            for (std::size_t i = 0; i < out.size(); ++i)
                onednn_max_diff = std::max(onednn_max_diff, double(std::abs(out.data()[i] - onednn->output()[i])));
            const auto& dx = x.grad().value();
            for (std::size_t i = 0; i < dx.size(); ++i)
                onednn_max_dx_diff = std::max(onednn_max_dx_diff, double(std::abs(dx.data()[i] - onednn->diff_input()[i])));
        }
    } else if (!c.peer.empty()) {
        throw std::invalid_argument("unknown peer '" + c.peer + "' (only onednn)");
    }

    std::vector<double> fused_ms, generic_ms, sgemm_ms, onednn_ms, onednn_primitive_ms;
    float checksum = 0;
    for (int round = 0; round < c.warmup + c.repeats; ++round) {
        const bool record = round >= c.warmup;
        auto start = Clock::now();
        checksum += rewind.run(ExecutionPath::fused);
        if (record) fused_ms.push_back(ms_since(start));
        if (!c.skip_generic) {
            start = Clock::now();
            checksum += rewind.run(ExecutionPath::generic);
            if (record) generic_ms.push_back(ms_since(start));
        }
        const double s = sgemm.run();
        if (record) sgemm_ms.push_back(s);
        if (onednn) {
            auto [total, primitives] = onednn->run();
            if (record) {
                onednn_ms.push_back(total);
                onednn_primitive_ms.push_back(primitives);
            }
        }
    }
    sink = sink + checksum;

    nlohmann::json j;
    j["cell"] = c.cell;
    j["seq_len"] = c.steps;
    j["batch"] = c.batch;
    j["input_size"] = c.input;
    j["hidden_size"] = c.hidden;
    j["layers"] = c.layers;
    j["bidirectional"] = c.bidirectional;
    j["threads"] = c.threads;
    j["repeats"] = c.repeats;
    j["gemm_backend"] = rw::blas::float_backend();
    const double fused = median(fused_ms);
    j["fused_ms"] = fused;
    if (!c.skip_generic) {
        j["generic_ms"] = median(generic_ms);
        j["generic_over_fused"] = median(generic_ms) / fused;
    }
    const double sgemm_median = median(sgemm_ms);
    j["fused_gflops"] = flops / (fused * 1e6);
    j["sgemm_gflops"] = sgemm.flops() / (sgemm_median * 1e6);
    j["fraction_of_sgemm_peak"] = (flops / (fused * 1e6)) / (sgemm.flops() / (sgemm_median * 1e6));
    rw::nn::fused::CellType type;
    rw::nn::fused::parse_cell_type(c.cell, type);
    j["saved_bytes_per_step"] = rw::nn::fused::saved_bytes_per_step(type, c.batch, c.hidden, sizeof(float)) * D * c.layers;
    if (onednn) {
        j["onednn_ms"] = median(onednn_ms);
        j["onednn_primitives_ms"] = median(onednn_primitive_ms);
        j["onednn_over_fused"] = median(onednn_ms) / fused;
        j["onednn_output_max_abs_diff"] = onednn_max_diff;
        j["onednn_dx_max_abs_diff"] = onednn_max_dx_diff;
    }
    if (!peer_note.empty()) j["peer_note"] = peer_note;
    return j;
}

void print_human(const nlohmann::json& j) {
    fmt::print("{} T={} B={} I={} H={} L={}{} threads={} (median of {}, float32, GEMM on {})\n",
               j["cell"].get<std::string>(), j["seq_len"].get<std::size_t>(), j["batch"].get<std::size_t>(),
               j["input_size"].get<std::size_t>(), j["hidden_size"].get<std::size_t>(), j["layers"].get<std::size_t>(),
               j["bidirectional"].get<bool>() ? " bidirectional" : "", j["threads"].get<int>(), j["repeats"].get<int>(),
               j["gemm_backend"].get<std::string>());
    fmt::print("  fused    {:9.3f} ms   {:7.1f} GFLOP/s   {:5.1f}% of sgemm peak ({:.1f} GFLOP/s)\n",
               j["fused_ms"].get<double>(), j["fused_gflops"].get<double>(),
               100 * j["fraction_of_sgemm_peak"].get<double>(), j["sgemm_gflops"].get<double>());
    if (j.contains("generic_ms"))
        fmt::print("  generic  {:9.3f} ms   generic/fused = {:.2f}x\n", j["generic_ms"].get<double>(),
                   j["generic_over_fused"].get<double>());
    if (j.contains("onednn_ms"))
        fmt::print("  oneDNN   {:9.3f} ms   (primitives alone {:.3f} ms)   oneDNN/fused = {:.2f}x   "
                   "max |diff| output {:.2g}, dx {:.2g}\n",
                   j["onednn_ms"].get<double>(), j["onednn_primitives_ms"].get<double>(),
                   j["onednn_over_fused"].get<double>(), j["onednn_output_max_abs_diff"].get<double>(),
                   j["onednn_dx_max_abs_diff"].get<double>());
    if (j.contains("peer_note")) fmt::print("  note: {}\n", j["peer_note"].get<std::string>());
    fmt::print("  saved for backward: {} bytes per time step\n", j["saved_bytes_per_step"].get<std::size_t>());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"One training step of a recurrent layer: fused vs generic path (vs oneDNN), float32"};
    Config c;
    bool suite = false;
    app.add_option("--cell", c.cell, "rnn_tanh, rnn_relu, lstm or gru")
        ->check(CLI::IsMember({"rnn_tanh", "rnn_relu", "lstm", "gru"}));
    app.add_option("--seq-len,-T", c.steps, "time steps")->check(CLI::PositiveNumber);
    app.add_option("--batch,-B", c.batch, "batch size")->check(CLI::PositiveNumber);
    app.add_option("--input-size,-I", c.input, "input features")->check(CLI::PositiveNumber);
    app.add_option("--hidden-size,-H", c.hidden, "hidden units")->check(CLI::PositiveNumber);
    app.add_option("--layers,-L", c.layers, "stacked layers")->check(CLI::PositiveNumber);
    app.add_flag("--bidirectional", c.bidirectional, "both directions");
    app.add_option("--threads", c.threads, "BLAS / oneDNN threads")->check(CLI::PositiveNumber);
    app.add_option("--repeats", c.repeats, "timed rounds (after the warm-up)")->check(CLI::PositiveNumber);
    app.add_option("--warmup", c.warmup, "untimed rounds first")->check(CLI::NonNegativeNumber);
    app.add_option("--peer", c.peer, "also time another implementation: onednn")->check(CLI::IsMember({"onednn"}));
    app.add_flag("--no-generic", c.skip_generic, "skip the generic path (slow for big sizes)");
    app.add_flag("--json", c.json, "one JSON object per case instead of text");
    app.add_flag("--suite", suite, "the standard sizes (LSTM/GRU/RNN at T=100,B=32,I=H=256 and T=100,B=1,I=H=128; "
                                   "LSTM at T=50,B=64,I=H=1024)");
    CLI11_PARSE(app, argc, argv);

    try {
        std::vector<Config> cases;
        if (suite) {
            struct Size { const char* cell; std::size_t T, B, I, H; };
            const Size sizes[] = {{"lstm", 100, 32, 256, 256}, {"gru", 100, 32, 256, 256},
                                  {"rnn_tanh", 100, 32, 256, 256}, {"lstm", 100, 1, 128, 128},
                                  {"gru", 100, 1, 128, 128}, {"rnn_tanh", 100, 1, 128, 128},
                                  {"lstm", 50, 64, 1024, 1024}};
            for (const auto& s : sizes) {
                Config k = c;
                k.cell = s.cell;
                k.steps = s.T;
                k.batch = s.B;
                k.input = s.I;
                k.hidden = s.H;
                k.layers = 1;
                k.bidirectional = false;
                cases.push_back(k);
            }
        } else {
            cases.push_back(c);
        }
        for (const auto& k : cases) {
            nlohmann::json j = run_case(k);
            if (c.json) std::cout << j.dump() << std::endl;
            else print_human(j);
        }
    } catch (const std::exception& error) {
        std::cerr << "bench_rnn: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
