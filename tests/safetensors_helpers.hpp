#pragma once
// Helpers the safetensors tests share (test_safetensors*.cpp): a scratch directory per test,
// files' bytes read and written, crafted files (a length prefix, a raw header, a data section),
// and checks that an error message holds every expected fragment.

#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>

namespace rw::testing {

namespace fs = std::filesystem;

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

inline void write_bytes(const fs::path& file, std::string_view bytes) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    BOOST_REQUIRE(out.good());
}

inline std::string read_bytes(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Built byte by byte so crafted files do not depend on the host's byte order.
inline std::string u64_le(std::uint64_t value) {
    std::string bytes;
    for (int i = 0; i < 8; ++i) bytes += static_cast<char>((value >> (8 * i)) & 0xff);
    return bytes;
}

inline std::string crafted_file(std::string_view header, std::string_view data) {
    return u64_le(header.size()) + std::string(header) + std::string(data);
}

inline bool contains(std::string_view text, std::string_view fragment) {
    return text.find(fragment) != std::string_view::npos;
}

inline void check_message(const std::string& message, std::initializer_list<std::string_view> fragments) {
    for (const std::string_view fragment : fragments) {
        BOOST_TEST(contains(message, fragment), "message \"" << message << "\" lacks \"" << fragment << "\"");
    }
}

}  // namespace rw::testing
