// The element-wise and normalisation ops against PyTorch (tests/fixtures/ops.safetensors, written
// by tests/make_torch_fixtures.py's ops_fixture): each value and each input's gradient of
// sum(output * seed), with the options the script used.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <functional>
#include <map>

#include <rewind/autograd.hpp>
#include <rewind/nn/io/safetensors.hpp>

#include "test_helpers.hpp"

using namespace rw;
using namespace rw::nn;
using testing::max_abs_difference;

namespace {

using Array = xt::xarray<double>;
using Leaves = std::map<std::string, Tensor<double>>;

const TensorMap& fixture() {
    static const TensorMap tensors = load_safetensors(std::filesystem::path(REWIND_TESTS_DIR) / "fixtures" / "ops.safetensors");
    return tensors;
}

const Array& stored(const std::string& name) { return get_array<double>(fixture(), name); }

void expect_matches_torch(const std::string& name, const std::vector<std::string>& inputs,
                          const std::function<Tensor<double>(Leaves&)>& op) {
    Leaves leaves;
    for (const auto& key : inputs) leaves[key] = Tensor<double>(stored(name + ".in." + key), true);
    const Tensor<double> value = op(leaves);
    BOOST_TEST(value.shape() == to_shape(stored(name + ".value").shape()));
    BOOST_TEST(max_abs_difference(value.value(), stored(name + ".value")) <= 1e-13);
    sum(mul(value, Tensor<double>(stored(name + ".seed")))).backward();
    for (auto& [key, leaf] : leaves)
        BOOST_TEST(max_abs_difference(leaf.grad().value(), stored(name + ".grad." + key)) <= 1e-13, name << " input " << key);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_against_torch)

BOOST_AUTO_TEST_CASE(abs_rsqrt_and_log_sigmoid_match_torch) {
    expect_matches_torch("abs", {"x"}, [](Leaves& x) { return abs(x["x"]); });
    expect_matches_torch("rsqrt", {"x"}, [](Leaves& x) { return rsqrt(x["x"]); });
    expect_matches_torch("log_sigmoid", {"x"}, [](Leaves& x) { return log_sigmoid(x["x"]); });
}

BOOST_AUTO_TEST_CASE(maximum_and_minimum_with_ties_and_broadcasting_match_torch) {
    expect_matches_torch("maximum", {"a", "b"}, [](Leaves& x) { return maximum(x["a"], x["b"]); });
    expect_matches_torch("minimum", {"a", "b"}, [](Leaves& x) { return minimum(x["a"], x["b"]); });
}

BOOST_AUTO_TEST_CASE(where_matches_torch) {
    const auto& stored_condition = get_array<std::int64_t>(fixture(), "where.in.condition");
    const xt::xarray<bool> condition = xt::cast<bool>(stored_condition);
    expect_matches_torch("where", {"a", "b"}, [&](Leaves& x) { return rw::where(condition, x["a"], x["b"]); });
}

BOOST_AUTO_TEST_CASE(softplus_with_default_and_given_beta_and_threshold_matches_torch) {
    expect_matches_torch("softplus", {"x"}, [](Leaves& x) { return softplus(x["x"]); });
    expect_matches_torch("softplus_beta2_threshold5", {"x"}, [](Leaves& x) { return softplus(x["x"], 2.0, 5.0); });
}

BOOST_AUTO_TEST_CASE(var_over_axes_unbiased_or_not_keepdim_or_not_matches_torch) {
    expect_matches_torch("var_axis1_unbiased", {"x"}, [](Leaves& x) { return var(x["x"], {1}, true, false); });
    expect_matches_torch("var_axes02_biased_keepdim", {"x"}, [](Leaves& x) { return var(x["x"], {0, 2}, false, true); });
    expect_matches_torch("var_all", {"x"}, [](Leaves& x) { return var(x["x"]); });
}

BOOST_AUTO_TEST_CASE(layer_norm_with_and_without_weight_and_bias_matches_torch) {
    expect_matches_torch("layer_norm_affine", {"x", "weight", "bias"},
                         [](Leaves& x) { return layer_norm(x["x"], {4, 5}, x["weight"], x["bias"]); });
    expect_matches_torch("layer_norm_plain", {"x"}, [](Leaves& x) { return layer_norm(x["x"], {5}); });
    expect_matches_torch("layer_norm_weight_eps", {"x", "weight"},
                         [](Leaves& x) { return layer_norm(x["x"], {5}, x["weight"], Tensor<double>(), 0.1); });
}

BOOST_AUTO_TEST_SUITE_END()
