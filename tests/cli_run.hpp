#pragma once
// Running the `rewind` command line from a test, as a separate process the way a user runs it.
// Needs REWIND_CLI_PATH (tests/CMakeLists.txt defines it for the suites that run the tool).

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace cli_test {

namespace fs = std::filesystem;

inline std::string read_bytes(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

inline void write_bytes(const fs::path& file, const std::string& bytes) { std::ofstream(file, std::ios::binary) << bytes; }

// A fresh directory per test, removed afterwards.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / fmt::format("rewind_test_cli.{}.{}", ::getpid(), counter++);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

struct Run {
    int exit_code = -1;
    std::string out, err;
};

inline std::string shell_quoted(const std::string& text) {
    std::string quoted = "'";
    for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

inline Run run_cli(const TempDir& dir, const std::vector<std::string>& args) {
    std::string command = shell_quoted(REWIND_CLI_PATH);
    for (const auto& arg : args) command.append(" ").append(shell_quoted(arg));
    const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
    command.append(" >").append(shell_quoted(out.string())).append(" 2>").append(shell_quoted(err.string()));
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(out), read_bytes(err)};
}

}  // namespace cli_test
