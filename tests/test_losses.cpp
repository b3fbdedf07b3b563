// Loss reductions (mean, sum, none) and probability targets against torch.nn.functional
// (tests/fixtures/losses.safetensors, written by tests/make_torch_fixtures.py): every loss value
// and every gradient, for cross_entropy, mse_loss and the sequence losses.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <functional>
#include <map>

#include <rewind/autograd.hpp>
#include <rewind/nn/io/safetensors.hpp>
#include <rewind/nn/layers/layers.hpp>

#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using testing::max_abs_difference;

namespace {

using Array = xt::xarray<double>;
using Inputs = std::map<std::string, Tensor<double>>;

const TensorMap& fixture() {
    static const TensorMap tensors =
        load_safetensors(std::filesystem::path(REWIND_TESTS_DIR) / "fixtures" / "losses.safetensors");
    return tensors;
}

const Array& stored(const std::string& name) { return get_array<double>(fixture(), name); }

const std::pair<const char*, Reduction> reductions[] = {
    {"mean", Reduction::mean}, {"sum", Reduction::sum}, {"none", Reduction::none}};

// Evaluates `loss` on fresh leaves of the fixture's inputs, seeds it with the fixture's seed,
// and compares the value and each input's gradient with PyTorch's.
void expect_matches_torch(const std::string& name, const std::map<std::string, std::string>& inputs,
                          const std::function<Tensor<double>(Inputs&, Reduction)>& loss) {
    for (const auto& [reduction_name, reduction] : reductions)
        BOOST_TEST_CONTEXT(name << " reduction " << reduction_name) {
            Inputs leaves;
            for (const auto& [key, fixture_name] : inputs) leaves[key] = Tensor<double>(stored(fixture_name), true);
            const std::string prefix = name + "." + reduction_name + ".";
            const Tensor<double> value = loss(leaves, reduction);
            BOOST_TEST(max_abs_difference(value.value(), stored(prefix + "loss")) <= 1e-13);
            sum(mul(value, Tensor<double>(stored(prefix + "seed")))).backward();
            for (auto& [key, leaf] : leaves)
                BOOST_TEST(max_abs_difference(leaf.grad().value(), stored(prefix + "grad." + key)) <= 1e-13, key);
        }
}

std::vector<std::int64_t> indices(const std::string& name) {
    const auto& stored_indices = get_array<std::int64_t>(fixture(), name);
    return {stored_indices.begin(), stored_indices.end()};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(losses)

BOOST_AUTO_TEST_CASE(cross_entropy_matches_torch_for_every_reduction) {
    expect_matches_torch("ce", {{"logits", "ce.logits"}}, [](Inputs& x, Reduction r) {
        return cross_entropy<double>(x["logits"], indices("ce.targets"), std::nullopt, r);
    });
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_a_mask_matches_torch_ignore_index_for_every_reduction) {
    std::vector<std::int64_t> targets = indices("ce_ignore.targets");
    Array mask = xt::ones<double>({targets.size()});
    for (std::size_t r = 0; r < targets.size(); ++r)
        if (targets[r] < 0) mask(r) = 0.0, targets[r] = 0;
    expect_matches_torch("ce_ignore", {{"logits", "ce.logits"}}, [&](Inputs& x, Reduction r) {
        return cross_entropy<double>(x["logits"], targets, mask, r);
    });
}

BOOST_AUTO_TEST_CASE(cross_entropy_with_probability_targets_matches_torch_for_every_reduction) {
    expect_matches_torch("soft", {{"logits", "soft.logits"}, {"probabilities", "soft.probabilities"}},
                         [](Inputs& x, Reduction r) { return cross_entropy(x["logits"], x["probabilities"], r); });
}

BOOST_AUTO_TEST_CASE(mse_loss_matches_torch_for_every_reduction) {
    expect_matches_torch("mse", {{"prediction", "mse.prediction"}, {"target", "mse.target"}},
                         [](Inputs& x, Reduction r) { return mse_loss(x["prediction"], x["target"], r); });
}

BOOST_AUTO_TEST_CASE(sequence_cross_entropy_with_lengths_matches_torch_for_every_reduction) {
    const auto& targets = get_array<std::int64_t>(fixture(), "seq_ce.targets");
    expect_matches_torch("seq_ce", {{"logits", "seq_ce.logits"}}, [&](Inputs& x, Reduction r) {
        return sequence_cross_entropy(x["logits"], targets, indices("seq.lengths"), r);
    });
}

BOOST_AUTO_TEST_CASE(sequence_mse_with_a_length_mask_matches_torch_for_every_reduction) {
    const Tensor<double> target(stored("seq_mse.target"));
    const Array mask = length_mask<double>(4, indices("seq.lengths"));
    expect_matches_torch("seq_mse", {{"prediction", "seq_mse.prediction"}},
                         [&](Inputs& x, Reduction r) { return sequence_mse(x["prediction"], target, mask, r); });
}

BOOST_AUTO_TEST_CASE(a_stored_array_of_another_dtype_or_name_is_reported_by_name) {
    testing::expect_error<SafetensorsError>([] { get_array<float>(fixture(), "ce.logits"); },
                                            {"tensor 'ce.logits' is F64, expected F32"});
    testing::expect_error<SafetensorsError>([] { get_array<double>(fixture(), "no.such"); }, {"'no.such' is missing"});
}

BOOST_AUTO_TEST_SUITE_END()
