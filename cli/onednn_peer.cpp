#include "onednn_peer.hpp"

#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include <rewind/nn/layers/cells.hpp>

namespace rw::cli {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// oneDNN's RNN primitives the built-in cells map to, told apart by the cell's type.
enum class PeerCell { rnn_tanh, rnn_relu, lstm, gru };

PeerCell peer_cell_of(const nn::RecurrentCell<float>& cell) {
    if (dynamic_cast<const nn::LSTMCell<float>*>(&cell)) return PeerCell::lstm;
    if (dynamic_cast<const nn::GRUCell<float>*>(&cell)) return PeerCell::gru;
    if (const auto* rnn = dynamic_cast<const nn::RNNCell<float>*>(&cell))
        return rnn->nonlinearity() == nn::Nonlinearity::relu ? PeerCell::rnn_relu : PeerCell::rnn_tanh;
    throw std::invalid_argument("the oneDNN peer runs PyTorch's RNN, LSTM and GRU cells only");
}

// What the peer needs to know of the layer.
struct PeerConfig {
    PeerCell cell;
    std::size_t steps = 0, batch = 0, input = 0, hidden = 0;
    bool bidirectional = false;
    bool inference = false;  // forward_inference alone: no workspace, no backward
};

}  // namespace

struct OnednnRnnStep::Impl {
    Impl(const PeerConfig& c, nn::Recurrent<float>& layer) : c_(c), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
        using dt = dnnl::memory::data_type;
        using tag = dnnl::memory::format_tag;
        using dims = dnnl::memory::dims;
        const auto T = dnnl::memory::dim(c.steps), B = dnnl::memory::dim(c.batch), I = dnnl::memory::dim(c.input),
                   H = dnnl::memory::dim(c.hidden), D = dnnl::memory::dim(c.bidirectional ? 2 : 1);
        G_ = dnnl::memory::dim(c.cell == PeerCell::lstm ? 4 : c.cell == PeerCell::gru ? 3 : 1);
        bias_gates_ = c.cell == PeerCell::gru ? 4 : G_;  // linear-before-reset GRU: b_hn is a fourth bias gate
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
        const bool lstm = c.cell == PeerCell::lstm;
        const dnnl::memory::desc none;
        const auto iter_c_md = lstm ? iter_md_ : none;
        const auto fwd_kind = c.inference ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training;
        const auto bwd_kind = dnnl::prop_kind::backward;

        if (lstm) {
            dnnl::lstm_forward::desc fd(fwd_kind, direction, src_layer_md_, iter_md_, iter_c_md, weights_layer_any,
                                        weights_iter_any, bias_md_, dst_layer_md_, iter_md_, iter_c_md);
            auto fpd = dnnl::lstm_forward::primitive_desc(fd, engine_);
            setup_forward(fpd);
            forward_ = dnnl::lstm_forward(fpd);
            if (c.inference) {
                finish_setup(layer);
                return;
            }
            dnnl::lstm_backward::desc bd(bwd_kind, direction, src_layer_md_, iter_md_, iter_c_md, weights_layer_any,
                                         weights_iter_any, bias_md_, dst_layer_md_, iter_md_, iter_c_md, src_layer_md_,
                                         iter_md_, iter_c_md, weights_layer_any, weights_iter_any, bias_md_,
                                         dst_layer_md_, iter_md_, iter_c_md);
            auto bpd = dnnl::lstm_backward::primitive_desc(bd, engine_, fpd);
            setup_backward(bpd);
            backward_ = dnnl::lstm_backward(bpd);
        } else if (c.cell == PeerCell::gru) {
            dnnl::lbr_gru_forward::desc fd(fwd_kind, direction, src_layer_md_, iter_md_, weights_layer_any,
                                           weights_iter_any, bias_md_, dst_layer_md_, iter_md_);
            auto fpd = dnnl::lbr_gru_forward::primitive_desc(fd, engine_);
            setup_forward(fpd);
            forward_ = dnnl::lbr_gru_forward(fpd);
            if (c.inference) {
                finish_setup(layer);
                return;
            }
            dnnl::lbr_gru_backward::desc bd(bwd_kind, direction, src_layer_md_, iter_md_, weights_layer_any,
                                            weights_iter_any, bias_md_, dst_layer_md_, iter_md_, src_layer_md_,
                                            iter_md_, weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_,
                                            iter_md_);
            auto bpd = dnnl::lbr_gru_backward::primitive_desc(bd, engine_, fpd);
            setup_backward(bpd);
            backward_ = dnnl::lbr_gru_backward(bpd);
        } else {
            const auto activation =
                c.cell == PeerCell::rnn_relu ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_tanh;
            dnnl::vanilla_rnn_forward::desc fd(fwd_kind, activation, direction, src_layer_md_, iter_md_,
                                               weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_, iter_md_);
            auto fpd = dnnl::vanilla_rnn_forward::primitive_desc(fd, engine_);
            setup_forward(fpd);
            forward_ = dnnl::vanilla_rnn_forward(fpd);
            if (c.inference) {
                finish_setup(layer);
                return;
            }
            dnnl::vanilla_rnn_backward::desc bd(bwd_kind, activation, direction, src_layer_md_, iter_md_,
                                                weights_layer_any, weights_iter_any, bias_md_, dst_layer_md_, iter_md_,
                                                src_layer_md_, iter_md_, weights_layer_any, weights_iter_any, bias_md_,
                                                dst_layer_md_, iter_md_);
            auto bpd = dnnl::vanilla_rnn_backward::primitive_desc(bd, engine_, fpd);
            setup_backward(bpd);
            backward_ = dnnl::vanilla_rnn_backward(bpd);
        }
        finish_setup(layer);
    }

    // The weights copied, the loss's gradient (ones) and zero initial states; set_input() brings
    // rewind's input. Inferring, the weights are fixed: reordered into the primitive's layout once.
    void finish_setup(nn::Recurrent<float>& layer) {
        copy_parameters(layer);
        fill(src_iter_, 0.0f);
        fill(src_iter_c_, 0.0f);
        if (c_.inference) {
            run_reorder(to_fwd_layer_, user_weights_layer_, fwd_weights_layer_);
            run_reorder(to_fwd_iter_, user_weights_iter_, fwd_weights_iter_);
            stream_.wait();
            return;
        }
        fill(diff_dst_layer_, 1.0f);
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
        if (!c_.inference) reorder_in();
        const auto primitives = Clock::now();
        forward_.execute(stream_, {{DNNL_ARG_SRC_LAYER, src_layer_}, {DNNL_ARG_SRC_ITER, src_iter_},
                                   {DNNL_ARG_SRC_ITER_C, src_iter_c_}, {DNNL_ARG_WEIGHTS_LAYER, fwd_weights_layer_},
                                   {DNNL_ARG_WEIGHTS_ITER, fwd_weights_iter_}, {DNNL_ARG_BIAS, bias_},
                                   {DNNL_ARG_DST_LAYER, dst_layer_}, {DNNL_ARG_DST_ITER, dst_iter_},
                                   {DNNL_ARG_DST_ITER_C, dst_iter_c_}, {DNNL_ARG_WORKSPACE, workspace_}});
        if (c_.inference) {
            stream_.wait();
            const double ms = ms_since(start);
            return {ms, ms};
        }
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
    dnnl::memory mem(const dnnl::memory::desc& d) { return dnnl::memory(d, engine_); }
    static std::optional<dnnl::reorder> reorder(dnnl::memory& from, dnnl::memory& to) {
        if (from.get_desc() == to.get_desc()) return std::nullopt;
        return dnnl::reorder(from, to);
    }

    template <class ForwardPd>
    void setup_forward(const ForwardPd& fpd) {
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
        workspace_ = mem(fpd.workspace_desc());
        to_fwd_layer_ = reorder(user_weights_layer_, fwd_weights_layer_);
        to_fwd_iter_ = reorder(user_weights_iter_, fwd_weights_iter_);
    }

    template <class BackwardPd>
    void setup_backward(const BackwardPd& bpd) {
        bwd_weights_layer_ = mem(bpd.weights_layer_desc());
        bwd_weights_iter_ = mem(bpd.weights_iter_desc());
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
        to_bwd_layer_ = reorder(user_weights_layer_, bwd_weights_layer_);
        to_bwd_iter_ = reorder(user_weights_iter_, bwd_weights_iter_);
        from_diff_layer_ = reorder(diff_weights_layer_, user_diff_weights_layer_);
        from_diff_iter_ = reorder(diff_weights_iter_, user_diff_weights_iter_);
    }

    void run_reorder(std::optional<dnnl::reorder>& r, dnnl::memory& from, dnnl::memory& to) {
        if (r) r->execute(stream_, from, to);
        else std::memcpy(to.get_data_handle(), from.get_data_handle(), from.get_desc().get_size());
    }

    void reorder_in() {
        run_reorder(to_fwd_layer_, user_weights_layer_, fwd_weights_layer_);
        run_reorder(to_fwd_iter_, user_weights_iter_, fwd_weights_iter_);
        run_reorder(to_bwd_layer_, user_weights_layer_, bwd_weights_layer_);
        run_reorder(to_bwd_iter_, user_weights_iter_, bwd_weights_iter_);
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
    void copy_parameters(nn::Recurrent<float>& layer) {
        const std::size_t G = std::size_t(G_), H = c_.hidden, D = c_.bidirectional ? 2 : 1;
        auto torch_gate = [&](std::size_t g) -> std::size_t {
            if (c_.cell != PeerCell::gru) return g;
            return g == 0 ? 1 : g == 1 ? 0 : 2;
        };
        float* wl = static_cast<float*>(user_weights_layer_.get_data_handle());
        float* wi = static_cast<float*>(user_weights_iter_.get_data_handle());
        float* bias = static_cast<float*>(bias_.get_data_handle());
        for (std::size_t d = 0; d < D; ++d) {
            const auto& cell = dynamic_cast<const nn::StandardCell<float>&>(layer.cell(0, d));
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
                    *b = (c_.cell == PeerCell::gru && g == 2) ? b_ih(row) : b_ih(row) + b_hh(row);
                }
            if (c_.cell == PeerCell::gru)
                for (std::size_t h = 0; h < H; ++h) bias[(d * bias_gates_ + 3) * H + h] = b_hh(2 * H + h);
        }
    }

    PeerConfig c_;
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

OnednnRnnStep::OnednnRnnStep(nn::Recurrent<float>& layer, std::size_t steps, std::size_t batch, bool inference) {
    const auto& options = layer.options();
    if (options.num_layers != 1)
        throw std::invalid_argument("the oneDNN peer runs one layer (its stacked layers need input_size == hidden_size)");
    const PeerConfig config{peer_cell_of(layer.cell(0, 0)), steps, batch, options.input_size, options.hidden_size,
                            options.bidirectional, inference};
    impl_ = std::make_unique<Impl>(config, layer);
}

OnednnRnnStep::~OnednnRnnStep() = default;

void OnednnRnnStep::set_input(const float* x) { impl_->set_input(x); }
std::pair<double, double> OnednnRnnStep::run() { return impl_->run(); }
const float* OnednnRnnStep::output() const { return impl_->output(); }
const float* OnednnRnnStep::diff_input() const { return impl_->diff_input(); }

}  // namespace rw::cli
