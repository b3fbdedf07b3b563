#include <boost/test/unit_test.hpp>

#include <rewind/nn/io/safetensors.hpp>
#include <rewind/nn/layers/layers.hpp>
#include <rewind/nn/train/checkpoint.hpp>
#include <xtensor/xoperation.hpp>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

namespace {

namespace fs = std::filesystem;
using rw::nn::load_safetensors;
using rw::nn::SafetensorsError;
using rw::nn::save_safetensors;
using rw::nn::StoredArray;
using rw::nn::TensorMap;
using Metadata = std::map<std::string, std::string>;

// A fresh directory per test, so tests neither see nor clobber each other's files.
class ScratchDir {
public:
    ScratchDir() : path_(create()) {}
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    ~ScratchDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }

    fs::path operator/(std::string_view name) const { return path_ / name; }
    const fs::path& path() const { return path_; }

private:
    static fs::path create() {
        static int counter = 0;
        const std::string test = boost::unit_test::framework::current_test_case().p_name;
        const fs::path path = fs::temp_directory_path() / ("rewind_safetensors_" + std::to_string(::getpid()) + "_" +
                                                           test + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
        return path;
    }

    fs::path path_;
};

void write_bytes(const fs::path& file, std::string_view bytes) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    BOOST_REQUIRE(out.good());
}

std::string read_bytes(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Built byte by byte so crafted files do not depend on the host's byte order.
std::string u64_le(std::uint64_t value) {
    std::string bytes;
    for (int i = 0; i < 8; ++i) bytes += static_cast<char>((value >> (8 * i)) & 0xff);
    return bytes;
}

std::string crafted_file(std::string_view header, std::string_view data) {
    return u64_le(header.size()) + std::string(header) + std::string(data);
}

std::string zeros(std::size_t count) { return std::string(count, '\0'); }

std::vector<std::string> file_names_in(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

bool contains(std::string_view text, std::string_view fragment) {
    return text.find(fragment) != std::string_view::npos;
}

void check_message(const std::string& message, std::initializer_list<std::string_view> fragments) {
    for (const std::string_view fragment : fragments) {
        BOOST_TEST(contains(message, fragment), "message \"" << message << "\" lacks \"" << fragment << "\"");
    }
}

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

// Lowers the process's file size limit so writes fail with EFBIG, which
// simulates a full disk even for root. SIGXFSZ would otherwise kill us.
class FileSizeLimit {
public:
    explicit FileSizeLimit(rlim_t bytes) {
        ::getrlimit(RLIMIT_FSIZE, &saved_);
        previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
        rlimit limit = saved_;
        limit.rlim_cur = bytes;
        active_ = ::setrlimit(RLIMIT_FSIZE, &limit) == 0;
    }
    FileSizeLimit(const FileSizeLimit&) = delete;
    FileSizeLimit& operator=(const FileSizeLimit&) = delete;
    ~FileSizeLimit() {
        ::setrlimit(RLIMIT_FSIZE, &saved_);
        std::signal(SIGXFSZ, previous_handler_);
    }

    bool active() const { return active_; }

private:
    rlimit saved_{};
    void (*previous_handler_)(int) = nullptr;
    bool active_ = false;
};

std::optional<std::string> save_error(const fs::path& file, const TensorMap& tensors) {
    try {
        save_safetensors(file, tensors);
    } catch (const SafetensorsError& error) {
        return error.what();
    }
    return std::nullopt;
}

const std::string weights_header = R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

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

// ---------------------------------------------------------------- atomic saving

BOOST_AUTO_TEST_CASE(save_replaces_existing_file) {
    const ScratchDir dir;
    save_safetensors(dir / "m.safetensors", {{"old", xt::xarray<float>{1, 2, 3}}});
    save_safetensors(dir / "m.safetensors", {{"new", xt::xarray<double>{4}}});
    const TensorMap loaded = load_safetensors(dir / "m.safetensors");
    BOOST_TEST(loaded.size() == 1u);
    BOOST_TEST(loaded.contains("new"));
}

BOOST_AUTO_TEST_CASE(save_leaves_no_temporary_files) {
    const ScratchDir dir;
    save_safetensors(dir / "m.safetensors", {{"x", xt::xarray<float>{1}}});
    save_safetensors(dir / "m.safetensors", {{"x", xt::xarray<float>{2}}});
    BOOST_TEST(file_names_in(dir.path()) == std::vector<std::string>{"m.safetensors"});
}

BOOST_AUTO_TEST_CASE(save_into_missing_directory_fails_and_creates_nothing) {
    const ScratchDir dir;
    const fs::path file = dir / "missing" / "m.safetensors";
    try {
        save_safetensors(file, {{"x", xt::xarray<float>{1}}});
        BOOST_ERROR("saving into a missing directory did not throw");
    } catch (const SafetensorsError& error) {
        check_message(error.what(), {file.string(), "cannot create temporary file"});
    }
    BOOST_TEST(file_names_in(dir.path()).empty());
}

BOOST_AUTO_TEST_CASE(failed_write_keeps_previous_file_and_removes_temporary) {
    const ScratchDir dir;
    const fs::path file = dir / "m.safetensors";
    save_safetensors(file, {{"old", xt::xarray<float>{1, 2, 3}}});
    const std::string before = read_bytes(file);
    const TensorMap big{{"big", xt::xarray<double>::from_shape({4096})}};

    std::optional<std::string> error;
    bool limited = false;
    {
        const FileSizeLimit limit(1024);
        limited = limit.active();
        if (limited) error = save_error(file, big);
    }
    BOOST_REQUIRE_MESSAGE(limited, "could not lower RLIMIT_FSIZE");
    BOOST_REQUIRE_MESSAGE(error.has_value(), "saving past the file size limit did not throw");
    check_message(*error, {file.string(), "cannot write temporary file"});
    BOOST_TEST(read_bytes(file) == before);
    BOOST_TEST(file_names_in(dir.path()) == std::vector<std::string>{"m.safetensors"});
}

BOOST_AUTO_TEST_CASE(failed_rename_removes_temporary) {
    // A non-empty directory cannot be replaced by a file, even by root.
    const ScratchDir dir;
    const fs::path target = dir / "m.safetensors";
    fs::create_directory(target);
    write_bytes(target / "keep", "x");
    const std::optional<std::string> error = save_error(target, {{"x", xt::xarray<float>{1}}});
    BOOST_REQUIRE(error.has_value());
    check_message(*error, {target.string(), "cannot rename temporary file"});
    BOOST_TEST(fs::is_directory(target));
    BOOST_TEST(file_names_in(dir.path()) == std::vector<std::string>{"m.safetensors"});
}

BOOST_AUTO_TEST_CASE(save_rejects_tensor_named_like_metadata_and_keeps_previous_file) {
    const ScratchDir dir;
    const fs::path file = dir / "m.safetensors";
    save_safetensors(file, {{"old", xt::xarray<float>{1}}});
    const std::string before = read_bytes(file);
    const std::optional<std::string> error = save_error(file, {{"__metadata__", xt::xarray<float>{1}}});
    BOOST_REQUIRE(error.has_value());
    check_message(*error, {file.string(), "'__metadata__'", "reserved"});
    BOOST_TEST(read_bytes(file) == before);
}

BOOST_AUTO_TEST_CASE(save_rejects_name_that_is_not_utf8) {
    const ScratchDir dir;
    const std::optional<std::string> error = save_error(dir / "m.safetensors", {{"bad\xff", xt::xarray<float>{1}}});
    BOOST_REQUIRE(error.has_value());
    check_message(*error, {"m.safetensors", "cannot encode the header"});
    BOOST_TEST(file_names_in(dir.path()).empty());
}

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

// ---------------------------------------------------------------- replacing files and crashes

BOOST_AUTO_TEST_SUITE(replacing)

mode_t mode_of(const fs::path& file) {
    struct stat status {};
    BOOST_REQUIRE(::stat(file.c_str(), &status) == 0);
    return status.st_mode & 07777;
}

BOOST_AUTO_TEST_CASE(save_keeps_the_mode_of_the_file_it_replaces) {
    const ScratchDir dir;
    const fs::path file = dir / "m.safetensors";
    for (const mode_t mode : {0600, 0640, 0444}) {
        save_safetensors(file, {{"x", xt::xarray<float>{1}}});
        BOOST_REQUIRE(::chmod(file.c_str(), mode) == 0);
        save_safetensors(file, {{"x", xt::xarray<float>{2}}});
        BOOST_TEST(mode_of(file) == mode, std::oct << "mode " << mode_of(file) << " after replacing a " << mode << " file");
    }
}

BOOST_AUTO_TEST_CASE(save_through_a_symlink_replaces_its_target_and_keeps_the_link) {
    const ScratchDir dir;
    fs::create_directory(dir / "real");
    const fs::path target = dir / "real" / "m.safetensors", link = dir / "link.safetensors";
    save_safetensors(target, {{"old", xt::xarray<float>{1}}});
    BOOST_REQUIRE(::chmod(target.c_str(), 0600) == 0);
    fs::create_symlink(fs::path("real") / "m.safetensors", link);  // relative, as users make them
    save_safetensors(link, {{"new", xt::xarray<float>{2}}});
    BOOST_TEST(fs::is_symlink(link));
    BOOST_TEST(load_safetensors(target).contains("new"));
    BOOST_TEST(mode_of(target) == 0600u);
    BOOST_TEST(file_names_in(dir / "real") == std::vector<std::string>{"m.safetensors"});
}

BOOST_AUTO_TEST_CASE(save_through_a_dangling_symlink_creates_its_target) {
    const ScratchDir dir;
    fs::create_symlink(dir / "target.safetensors", dir / "link.safetensors");
    save_safetensors(dir / "link.safetensors", {{"x", xt::xarray<float>{1}}});
    BOOST_TEST(fs::is_symlink(dir / "link.safetensors"));
    BOOST_TEST(load_safetensors(dir / "target.safetensors").contains("x"));
}

BOOST_AUTO_TEST_CASE(save_removes_temporaries_of_dead_processes_and_keeps_those_of_live_ones) {
    const ScratchDir dir;
    const pid_t dead = ::fork();
    if (dead == 0) ::_exit(0);
    BOOST_REQUIRE(dead > 0);
    int status = 0;
    ::waitpid(dead, &status, 0);  // reaped: its pid names no process now
    const std::string stale = ".m.safetensors.tmp." + std::to_string(dead) + ".0";
    const std::string live = ".m.safetensors.tmp." + std::to_string(::getppid()) + ".0";
    write_bytes(dir / stale, "partial");
    write_bytes(dir / live, "in progress");
    save_safetensors(dir / "m.safetensors", {{"x", xt::xarray<float>{1}}});
    BOOST_TEST(file_names_in(dir.path()) == (std::vector<std::string>{live, "m.safetensors"}));
}

// A child process writes checkpoints 1, 2, 3, ... (every value of checkpoint n is n) and reports
// each completed save through a pipe; it is killed with SIGKILL after a random delay. The file
// must then load and hold the last reported checkpoint or the one after it, whole.
BOOST_AUTO_TEST_CASE(a_save_killed_at_a_random_point_leaves_the_previous_or_the_new_checkpoint_200_times) {
    const ScratchDir dir;
    const fs::path file = dir / "checkpoint.safetensors";
    rw::Generator generator(1);
    rw::nn::Linear<double> model(64, 128, generator);  // 8256 values, 66 KB a checkpoint
    const auto save = [&](std::int64_t step) {
        for (auto& parameter : model.parameters()) parameter.mutable_value().fill(double(step));
        rw::nn::Checkpoint<double>(model).save(file, {{"step", std::to_string(step)}});
    };
    save(0);
    std::mt19937 random(2026);
    std::int64_t held = 0;
    int interrupted = 0;
    for (int round = 0; round < 200; ++round) {
        int report[2];
        BOOST_REQUIRE(::pipe(report) == 0);
        const pid_t child = ::fork();
        BOOST_REQUIRE(child >= 0);
        if (child == 0) {
            ::close(report[0]);
            try {
                for (std::int64_t step = held + 1;; ++step) {
                    save(step);
                    if (::write(report[1], &step, sizeof step) != sizeof step) ::_exit(3);
                }
            } catch (...) {
                ::_exit(2);
            }
        }
        ::close(report[1]);
        std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(random)));
        ::kill(child, SIGKILL);
        int status = 0;
        ::waitpid(child, &status, 0);
        BOOST_REQUIRE_MESSAGE(WIFSIGNALED(status), "the saving process ended by itself, status " << status);
        std::int64_t completed = held, step = 0;
        while (::read(report[0], &step, sizeof step) == sizeof step) completed = step;
        ::close(report[0]);

        rw::nn::Linear<double> loaded(64, 128, generator);
        const auto user = rw::nn::Checkpoint<double>(loaded).load(file);
        held = std::stoll(user.at("step"));
        BOOST_TEST_REQUIRE((held == completed || held == completed + 1), "round " << round << ": the file holds checkpoint "
                                                                             << held << ", the last completed was " << completed);
        for (const auto& parameter : loaded.parameters())
            BOOST_TEST_REQUIRE(xt::all(xt::equal(parameter.value(), double(held))), "round " << round << ": a mixed checkpoint");
        interrupted += held == completed;
        // At most the killed process's own temporary is left: each save removes the dead ones'.
        BOOST_TEST_REQUIRE(file_names_in(dir.path()).size() <= 2u);
    }
    save(held + 1);
    BOOST_TEST(file_names_in(dir.path()) == std::vector<std::string>{"checkpoint.safetensors"});
    BOOST_TEST_MESSAGE(interrupted << " of 200 kills left the previous checkpoint, the others the new one");
}

BOOST_AUTO_TEST_SUITE_END()
