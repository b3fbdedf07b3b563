// Files the safetensors reader rejects: missing, too short, a header that is not JSON or not the
// format's, bad dtypes, shapes and offsets, overlapping or gapped data, bad metadata. Every error
// names the file and says what is wrong with it. Helpers in safetensors_helpers.hpp.

#include <boost/test/unit_test.hpp>

#include <rewind/nn/io/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>

#include "safetensors_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using rw::nn::load_safetensors;
using rw::nn::SafetensorsError;
using rw::nn::save_safetensors;
using rw::testing::check_message;
using rw::testing::crafted_file;
using rw::testing::ScratchDir;
using rw::testing::u64_le;
using rw::testing::write_bytes;

std::string zeros(std::size_t count) { return std::string(count, '\0'); }

void check_load_fails(const fs::path& file, std::initializer_list<std::string_view> fragments) {
    try {
        load_safetensors(file);
        BOOST_ERROR("loading " << file << " did not throw");
    } catch (const SafetensorsError& error) {
        BOOST_TEST_MESSAGE(error.what());
        check_message(error.what(), {file.string()});
        check_message(error.what(), fragments);
    }
}

// Writes a file with the given raw header and data section, then expects
// loading it to fail with a message holding every fragment.
void check_rejected(std::string_view header, std::string_view data, std::initializer_list<std::string_view> fragments) {
    const ScratchDir dir;
    const fs::path file = dir / "model.safetensors";
    write_bytes(file, crafted_file(header, data));
    check_load_fails(file, fragments);
}

const std::string weights_header = R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

// ---------------------------------------------------------------- rejected files

BOOST_AUTO_TEST_CASE(rejects_missing_file) {
    const ScratchDir dir;
    check_load_fails(dir / "absent.safetensors", {"cannot open for reading"});
}

BOOST_AUTO_TEST_CASE(rejects_directory) {
    const ScratchDir dir;
    check_load_fails(dir.path(), {"not a regular file"});
}

BOOST_AUTO_TEST_CASE(rejects_file_shorter_than_length_prefix) {
    const ScratchDir dir;
    write_bytes(dir / "short.safetensors", std::string("\x02\0\0", 3));
    check_load_fails(dir / "short.safetensors", {"file is 3 bytes, too short for the 8-byte header length"});
}

BOOST_AUTO_TEST_CASE(rejects_header_length_beyond_file_size) {
    const ScratchDir dir;
    write_bytes(dir / "huge.safetensors", u64_le(std::uint64_t{1} << 62) + "{}");
    check_load_fails(dir / "huge.safetensors",
                     {"header length 4611686018427387904 exceeds the 2 bytes that follow it"});
    write_bytes(dir / "off_by_one.safetensors", u64_le(3) + "{}");
    check_load_fails(dir / "off_by_one.safetensors", {"header length 3 exceeds the 2 bytes that follow it"});
}

BOOST_AUTO_TEST_CASE(rejects_header_that_is_not_json) {
    check_rejected(R"({"weight": {"dtype": "F32",)", "", {"header is not valid JSON"});
}

BOOST_AUTO_TEST_CASE(rejects_header_that_is_not_utf8) {
    check_rejected("{\"w\xff\":{}}", "", {"header is not valid JSON", "UTF-8"});
}

BOOST_AUTO_TEST_CASE(rejects_header_that_is_not_an_object) {
    check_rejected("[1, 2]", "", {"header must be a JSON object, found array"});
}

BOOST_AUTO_TEST_CASE(rejects_duplicate_keys) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                   zeros(16), {"duplicate key 'weight'"});
    check_rejected(R"({"weight":{"dtype":"F32","dtype":"F64","shape":[2],"data_offsets":[0,8]}})", zeros(8),
                   {"duplicate key 'dtype'"});
}

BOOST_AUTO_TEST_CASE(rejects_entry_that_is_not_an_object) {
    check_rejected(R"({"weight":[0,8]})", "", {"tensor 'weight'", "entry must be a JSON object, found array"});
}

BOOST_AUTO_TEST_CASE(rejects_entry_missing_a_field) {
    check_rejected(R"({"weight":{"shape":[2],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "missing field 'dtype'"});
    check_rejected(R"({"weight":{"dtype":"F32","data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "missing field 'shape'"});
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2]}})", zeros(8),
                   {"tensor 'weight'", "missing field 'data_offsets'"});
}

BOOST_AUTO_TEST_CASE(rejects_entry_with_unexpected_field) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"stride":[1]}})", zeros(8),
                   {"tensor 'weight'", "unexpected field 'stride'"});
}

BOOST_AUTO_TEST_CASE(rejects_dtype_that_is_not_a_string) {
    check_rejected(R"({"weight":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "'dtype' must be a string, found number"});
}

BOOST_AUTO_TEST_CASE(rejects_unsupported_dtype) {
    check_rejected(R"({"weight":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "unsupported dtype 'F16'", "F32, F64, I64"});
}

BOOST_AUTO_TEST_CASE(rejects_shape_that_is_not_an_array) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "'shape' must be an array, found number"});
}

BOOST_AUTO_TEST_CASE(rejects_negative_shape_entry) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "shape entry 1 is negative (-1)"});
}

BOOST_AUTO_TEST_CASE(rejects_non_integer_shape_entry) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "shape entry 0 is not an integer (2.0)"});
    check_rejected(R"({"weight":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", zeros(8),
                   {"tensor 'weight'", "shape entry 0 is not an integer (\"2\")"});
}

BOOST_AUTO_TEST_CASE(rejects_shape_whose_size_overflows) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "",
                   {"tensor 'weight'", "shape [4294967296, 4294967296] is too large"});
    // Even with no elements the other dimensions must stay indexable.
    check_rejected(R"({"weight":{"dtype":"F64","shape":[0,4611686018427387904],"data_offsets":[0,0]}})", "",
                   {"tensor 'weight'", "is too large"});
}

BOOST_AUTO_TEST_CASE(rejects_data_offsets_that_are_not_two_integers) {
    const std::string_view problem = "'data_offsets' must be two non-negative integers";
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", zeros(8),
                   {"tensor 'w'", problem, "[0,4,8]"});
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", zeros(8), {"tensor 'w'", problem});
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", zeros(8), {"tensor 'w'", problem});
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", zeros(8), {"tensor 'w'", problem});
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}})", zeros(8), {"tensor 'w'", problem});
}

BOOST_AUTO_TEST_CASE(rejects_deeply_nested_values_without_quoting_them) {
    const std::size_t depth = 100000;
    const std::string nested = std::string(depth, '[') + std::string(depth, ']');
    check_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":)" + nested + "}}", zeros(8),
                   {"tensor 'w'", "'data_offsets' must be two non-negative integers, found a nested array"});
}

BOOST_AUTO_TEST_CASE(rejects_data_offsets_that_begin_after_they_end) {
    check_rejected(R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", zeros(8),
                   {"tensor 'weight'", "data_offsets [8, 0] begin after they end"});
}

BOOST_AUTO_TEST_CASE(rejects_data_offsets_past_data_section) {
    check_rejected(R"({"weight_ih_l0":{"dtype":"F32","shape":[24],"data_offsets":[0,96]}})", zeros(64),
                   {"tensor 'weight_ih_l0'", "data_offsets [0, 96] extend past the data section (64 bytes)"});
}

BOOST_AUTO_TEST_CASE(rejects_byte_length_that_does_not_match_shape) {
    check_rejected(
        R"({"weight":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}})", zeros(16),
        {"tensor 'weight'", "data_offsets [0, 16] hold 16 bytes but dtype F64 with shape [3] needs 24 bytes"});
}

BOOST_AUTO_TEST_CASE(rejects_overlapping_tensors) {
    check_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   zeros(12), {"tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) overlap"});
}

BOOST_AUTO_TEST_CASE(rejects_gap_between_tensors) {
    check_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                   zeros(12), {"4 unused bytes in the data section before tensor 'b'"});
    check_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", zeros(8),
                   {"4 unused bytes in the data section before tensor 'a'"});
}

BOOST_AUTO_TEST_CASE(rejects_trailing_bytes_after_last_tensor) {
    check_rejected(weights_header, zeros(11), {"3 unused bytes in the data section after the last tensor"});
    check_rejected("{}", zeros(5), {"5 unused bytes in the data section, which holds no tensor"});
}

BOOST_AUTO_TEST_CASE(rejects_truncated_file) {
    const ScratchDir dir;
    const fs::path file = dir / "m.safetensors";
    save_safetensors(file, {{"a", xt::xarray<float>{1, 2}}, {"b", xt::xarray<float>{3, 4}}});
    fs::resize_file(file, fs::file_size(file) - 4);
    check_load_fails(file, {"tensor 'b'", "extend past the data section"});
}

BOOST_AUTO_TEST_CASE(rejects_metadata_that_is_not_an_object) {
    check_rejected(R"({"__metadata__":["format","pt"]})", "",
                   {"'__metadata__' must be an object of strings, found array"});
}

BOOST_AUTO_TEST_CASE(rejects_metadata_with_non_string_value) {
    check_rejected(R"({"__metadata__":{"format":"pt","epoch":3}})", "",
                   {"'__metadata__' entry 'epoch' must be a string, found number"});
}

BOOST_AUTO_TEST_SUITE_END()
