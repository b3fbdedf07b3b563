// Saving safetensors files safely: a save replaces the file atomically (a temporary renamed over
// it), a failed save keeps the previous file, leaves no temporary and names the file in its
// error; replacing keeps the file's mode and symlinks, and a save killed at a random point leaves
// the previous or the new checkpoint, whole. Helpers in safetensors_helpers.hpp.

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
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "safetensors_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using rw::nn::load_safetensors;
using rw::nn::SafetensorsError;
using rw::nn::save_safetensors;
using rw::nn::TensorMap;
using rw::testing::check_message;
using rw::testing::read_bytes;
using rw::testing::ScratchDir;
using rw::testing::write_bytes;

std::vector<std::string> file_names_in(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
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

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

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
