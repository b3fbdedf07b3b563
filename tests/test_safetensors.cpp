// safetensors files written and read back: round trips of every dtype bit for bit, with metadata,
// and the exact bytes a save writes. Saving safely (atomic replacement, failures that keep the
// previous file, a save killed midway) is in test_safetensors_saving.cpp, files the reader rejects
// in test_safetensors_rejected.cpp; shared helpers in safetensors_helpers.hpp.

#include <boost/test/unit_test.hpp>

#include <rewind/nn/io/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "safetensors_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using rw::nn::load_safetensors;
using rw::nn::save_safetensors;
using rw::nn::StoredArray;
using rw::nn::TensorMap;
using rw::testing::crafted_file;
using rw::testing::read_bytes;
using rw::testing::ScratchDir;
using rw::testing::write_bytes;
using Metadata = std::map<std::string, std::string>;

// Equal dtype, shape and bytes: compares NaNs and signed zeros exactly.
bool same_bits(const StoredArray& a, const StoredArray& b) {
    if (a.index() != b.index() || rw::nn::shape_of(a) != rw::nn::shape_of(b)) return false;
    return std::visit(
        [&](const auto& x) {
            const auto& y = std::get<std::decay_t<decltype(x)>>(b);
            return x.size() == 0 || std::memcmp(x.data(), y.data(), x.size() * sizeof(*x.data())) == 0;
        },
        a);
}

void check_round_trip(const TensorMap& tensors, const Metadata& metadata = {}) {
    const ScratchDir dir;
    const fs::path file = dir / "model.safetensors";
    save_safetensors(file, tensors, metadata);
    Metadata loaded_metadata{{"stale", "entry"}};
    const TensorMap loaded = load_safetensors(file, &loaded_metadata);
    BOOST_TEST(loaded_metadata == metadata);
    BOOST_REQUIRE_EQUAL(loaded.size(), tensors.size());
    for (const auto& [name, array] : tensors) {
        BOOST_REQUIRE(loaded.contains(name));
        BOOST_TEST(same_bits(loaded.at(name), array), "tensor '" << name << "' differs after the round trip");
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

// ---------------------------------------------------------------- round trips

BOOST_AUTO_TEST_CASE(round_trips_f32_matrix) {
    check_round_trip({{"weight", xt::xarray<float>{{1.5f, -2.25f, 3.0f}, {0.0f, 1e-30f, 6.5e30f}}}});
}

BOOST_AUTO_TEST_CASE(round_trips_f64_special_values_bit_exactly) {
    constexpr auto inf = std::numeric_limits<double>::infinity();
    const xt::xarray<double> values{std::numeric_limits<double>::quiet_NaN(),  inf, -inf, -0.0,
                                    std::numeric_limits<double>::denorm_min(), 0.1};
    check_round_trip({{"values", values}});
}

BOOST_AUTO_TEST_CASE(round_trips_i64_extremes) {
    const xt::xarray<std::int64_t> lengths{{std::numeric_limits<std::int64_t>::min(), -1},
                                           {0, std::numeric_limits<std::int64_t>::max()}};
    check_round_trip({{"lengths", lengths}});
}

BOOST_AUTO_TEST_CASE(round_trips_scalar) {
    const xt::xarray<double> scalar(2.5);
    BOOST_REQUIRE(scalar.dimension() == 0);
    check_round_trip({{"scale", scalar}});
}

BOOST_AUTO_TEST_CASE(round_trips_tensor_with_zero_length_dimension) {
    check_round_trip({{"a", xt::xarray<float>{1.0f}},
                      {"empty", xt::xarray<float>::from_shape({0, 3})},
                      {"z", xt::xarray<std::int64_t>{4}}});
}

BOOST_AUTO_TEST_CASE(round_trips_empty_map_with_metadata) {
    check_round_trip({}, {{"format", "pt"}, {"note", "üñí \"quoted\"\n"}});
}

BOOST_AUTO_TEST_CASE(round_trips_mixed_dtypes_with_metadata) {
    check_round_trip({{"bias", xt::xarray<double>{0.5, -0.5}},
                      {"lengths", xt::xarray<std::int64_t>{3, 1, 2}},
                      {"weight_ih_l0", xt::xarray<float>{{1, 2}, {3, 4}, {5, 6}}}},
                     {{"framework", "rewind"}});
}

BOOST_AUTO_TEST_CASE(load_clears_metadata_when_file_has_none) {
    const ScratchDir dir;
    save_safetensors(dir / "m.safetensors", {{"x", xt::xarray<float>{1}}});
    Metadata metadata{{"stale", "entry"}};
    load_safetensors(dir / "m.safetensors", &metadata);
    BOOST_TEST(metadata.empty());
}

BOOST_AUTO_TEST_CASE(loads_file_with_foreign_key_order_and_unpadded_header) {
    // Another writer may order keys and tensors differently and skip padding.
    const ScratchDir dir;
    const std::string header =
        R"({"b":{"shape":[],"data_offsets":[0,8],"dtype":"F64"},"a":{"data_offsets":[8,16],"shape":[2],"dtype":"F32"}})";
    const std::string data =
        std::string("\x00\x00\x00\x00\x00\x00\xf0\x3f", 8) + std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
    write_bytes(dir / "m.safetensors", crafted_file(header, data));
    const TensorMap loaded = load_safetensors(dir / "m.safetensors");
    BOOST_TEST(std::get<xt::xarray<double>>(loaded.at("b"))() == 1.0);
    BOOST_TEST(std::get<xt::xarray<float>>(loaded.at("a")) == (xt::xarray<float>{1.0f, -2.0f}));
}

BOOST_AUTO_TEST_CASE(dtype_name_and_shape_of_describe_arrays) {
    BOOST_TEST(rw::nn::dtype_name(xt::xarray<float>{1}) == "F32");
    BOOST_TEST(rw::nn::dtype_name(xt::xarray<double>{1}) == "F64");
    BOOST_TEST(rw::nn::dtype_name(xt::xarray<std::int64_t>{1}) == "I64");
    BOOST_TEST(rw::nn::shape_of(xt::xarray<float>::from_shape({2, 0, 3})) == (std::vector<std::size_t>{2, 0, 3}));
    BOOST_TEST(rw::nn::shape_of(xt::xarray<double>(1.0)).empty());
}

// ---------------------------------------------------------------- bytes on disk

BOOST_AUTO_TEST_CASE(writes_the_documented_byte_layout) {
    const ScratchDir dir;
    save_safetensors(dir / "m.safetensors", {{"b", xt::xarray<std::int64_t>(7)}, {"a", xt::xarray<float>{1.0f, -2.0f}}},
                     {{"format", "pt"}});
    const std::string header = R"({"__metadata__":{"format":"pt"},)"
                               R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})"
                               "      ";  // padded from 138 to 144 bytes
    const std::string expected = std::string("\x90\x00\x00\x00\x00\x00\x00\x00", 8) + header +
                                 std::string("\x00\x00\x80\x3f", 4) +  // 1.0f
                                 std::string("\x00\x00\x00\xc0", 4) +  // -2.0f
                                 std::string("\x07\x00\x00\x00\x00\x00\x00\x00", 8);
    BOOST_REQUIRE_EQUAL(header.size(), 144u);
    BOOST_TEST(read_bytes(dir / "m.safetensors") == expected);
}

BOOST_AUTO_TEST_CASE(writes_empty_map_as_padded_empty_object) {
    const ScratchDir dir;
    save_safetensors(dir / "m.safetensors", {});
    BOOST_TEST(read_bytes(dir / "m.safetensors") == std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
}

BOOST_AUTO_TEST_SUITE_END()
