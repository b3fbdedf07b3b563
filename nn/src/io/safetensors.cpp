#include "rewind/nn/io/safetensors.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace rw::nn {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Shape = std::vector<std::size_t>;

// The format is little-endian and row-major; copying raw bytes between disk
// and xtensor storage is only correct when the host and the arrays agree.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4);
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8);
static_assert(xt::xarray<float>::static_layout == xt::layout_type::row_major &&
                  xt::xarray<double>::static_layout == xt::layout_type::row_major &&
                  xt::xarray<std::int64_t>::static_layout == xt::layout_type::row_major,
              "safetensors data is row-major");

constexpr std::string_view metadata_key = "__metadata__";
constexpr std::size_t length_prefix_size = sizeof(std::uint64_t);
constexpr std::size_t header_alignment = 8;
constexpr std::size_t max_quoted_json = 40;

struct DtypeInfo {
    std::string_view name;
    std::size_t element_size;
};

// Indexed like StoredArray's alternatives, so a variant's index() is its dtype.
constexpr std::array<DtypeInfo, 3> dtypes{{{"F32", 4}, {"F64", 8}, {"I64", 8}}};
static_assert(std::variant_size_v<StoredArray> == dtypes.size());
static_assert(sizeof(std::variant_alternative_t<0, StoredArray>::value_type) == 4);
static_assert(sizeof(std::variant_alternative_t<1, StoredArray>::value_type) == 8);
static_assert(sizeof(std::variant_alternative_t<2, StoredArray>::value_type) == 8);

StoredArray allocate(std::size_t dtype, const Shape& shape) {
    switch (dtype) {
        case 0:
            return xt::xarray<float>::from_shape(shape);
        case 1:
            return xt::xarray<double>::from_shape(shape);
        default:
            return xt::xarray<std::int64_t>::from_shape(shape);
    }
}

template <class Array>
std::size_t byte_size(const Array& array) {
    return array.size() * sizeof(typename Array::value_type);
}

std::size_t byte_size(const StoredArray& array) {
    return std::visit([](const auto& a) { return byte_size(a); }, array);
}

[[noreturn]] void fail(const fs::path& file, std::string_view what) {
    throw SafetensorsError(fmt::format("{}: {}", file.string(), what));
}

std::string system_message(int error) { return std::generic_category().message(error); }

// Untrusted JSON can be arbitrarily long and deeply nested (dump() recurses),
// so messages quote only flat values, and only their start.
std::string quote(const json& value) {
    const auto flat = [](const json& v) { return v.is_primitive(); };
    if (!value.is_primitive() && !std::all_of(value.begin(), value.end(), flat)) {
        return fmt::format("a nested {}", value.type_name());
    }
    std::string text = value.dump();
    if (text.size() > max_quoted_json) {
        text.resize(max_quoted_json);
        text += "...";
    }
    return text;
}

std::string describe_offsets(std::uint64_t begin, std::uint64_t end) {
    return fmt::format("data_offsets [{}, {}]", begin, end);
}

// ---------------------------------------------------------------- writing

std::string serialize_header(const TensorMap& tensors, const std::map<std::string, std::string>& metadata) {
    // Built member by member because nlohmann::ordered_json looks keys up
    // linearly, and the order (metadata first, fields dtype/shape/data_offsets)
    // follows the reference implementation.
    std::string text = "{";
    auto append_member = [&text](const std::string& key, const auto& value) {
        if (text.size() > 1) text += ',';
        text += json(key).dump() + ':' + value.dump();
    };
    if (!metadata.empty()) append_member(std::string(metadata_key), json(metadata));
    std::uint64_t offset = 0;
    for (const auto& [name, array] : tensors) {
        const std::uint64_t end = offset + byte_size(array);
        nlohmann::ordered_json entry;
        entry["dtype"] = dtype_name(array);
        entry["shape"] = shape_of(array);
        entry["data_offsets"] = {offset, end};
        append_member(name, entry);
        offset = end;
    }
    text += '}';
    const std::size_t padded = (text.size() + header_alignment - 1) / header_alignment * header_alignment;
    text.resize(padded, ' ');
    return text;
}

// Where a save really goes: a symlink is followed (also a chain, and a dangling one, whose
// target is created), so the new file replaces the symlink's target and the link stays.
fs::path resolve_symlinks(const fs::path& file) {
    fs::path path = file;
    for (int hops = 0;; ++hops) {
        std::error_code error;
        if (!fs::is_symlink(fs::symlink_status(path, error))) return path;
        if (hops == 40) fail(file, "too many levels of symbolic links");
        const fs::path target = fs::read_symlink(path, error);
        if (error) fail(file, fmt::format("cannot read the symbolic link '{}': {}", path.string(), error.message()));
        path = target.is_absolute() ? target : path.parent_path() / target;
    }
}

// A save killed before its rename (SIGKILL, power loss) leaves its temporary file behind, named
// after the process that wrote it. The next save beside it removes those whose process no longer
// exists, so they cannot accumulate; files of live processes (also concurrent savers) are kept.
// Best effort: a directory that cannot be listed is left as it is.
void remove_stale_temporaries(const fs::path& target) {
    const std::string prefix = fmt::format(".{}.tmp.", target.filename().string());
    const fs::path directory = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::error_code error;
    for (fs::directory_iterator it(directory, error), end; !error && it != end; it.increment(error)) {
        const std::string name = it->path().filename().string();
        if (name.compare(0, prefix.size(), prefix) != 0) continue;
        const std::string rest = name.substr(prefix.size());
        const std::size_t dot = rest.find('.');
        if (dot == 0 || dot == std::string::npos || rest.find_first_not_of("0123456789") != dot) continue;
        const long pid = std::strtol(rest.substr(0, dot).c_str(), nullptr, 10);
        if (pid <= 0 || pid == ::getpid()) continue;
        if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
            std::error_code ignored;
            fs::remove(it->path(), ignored);
        }
    }
}

// Owns the temporary file of one save until it is renamed over the target;
// if anything fails before that, the destructor removes it again. The temporary
// file is created beside the target, so the rename stays within one file system.
class TemporaryFile {
public:
    explicit TemporaryFile(const fs::path& target) : target_(resolve_symlinks(target)), path_(unique_sibling(target_)) {
        remove_stale_temporaries(target_);
        fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd_ < 0) {
            fail(target_, fmt::format("cannot create temporary file '{}': {}", path_.string(), system_message(errno)));
        }
        keep_owner_and_mode();
    }

    TemporaryFile(const TemporaryFile&) = delete;
    TemporaryFile& operator=(const TemporaryFile&) = delete;

    const fs::path& target() const { return target_; }

    ~TemporaryFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!committed_) {
            std::error_code ignored;
            fs::remove(path_, ignored);
        }
    }

    void write(const void* data, std::size_t size) {
        const char* bytes = static_cast<const char*>(data);
        while (size > 0) {
            const ssize_t written = ::write(fd_, bytes, size);
            if (written < 0 && errno == EINTR) continue;
            if (written < 0) {
                fail(target_,
                     fmt::format("cannot write temporary file '{}': {}", path_.string(), system_message(errno)));
            }
            bytes += written;
            size -= static_cast<std::size_t>(written);
        }
    }

    // The data must be on disk before the rename makes it visible, or a crash
    // could leave the target name pointing at an incomplete file.
    void commit() {
        if (::fsync(fd_) != 0) {
            fail(target_, fmt::format("cannot sync temporary file '{}': {}", path_.string(), system_message(errno)));
        }
        const int closed = ::close(fd_);
        fd_ = -1;
        if (closed != 0) {
            fail(target_, fmt::format("cannot close temporary file '{}': {}", path_.string(), system_message(errno)));
        }
        std::error_code error;
        fs::rename(path_, target_, error);
        if (error) {
            fail(target_,
                 fmt::format("cannot rename temporary file '{}' over it: {}", path_.string(), error.message()));
        }
        committed_ = true;
    }

private:
    // A replaced file keeps its permission bits (a 0600 checkpoint stays private) and, where the
    // process may set them, its owner and group; a new file gets 0666 less the umask.
    void keep_owner_and_mode() {
        struct stat existing {};
        if (::stat(target_.c_str(), &existing) != 0) return;
        if (::fchown(fd_, existing.st_uid, existing.st_gid) != 0) {
            // Not permitted for another user's file: it then belongs to whoever saves it.
        }
        if (::fchmod(fd_, existing.st_mode & 07777) != 0) {
            fail(target_, fmt::format("cannot give temporary file '{}' the mode of the file it replaces: {}",
                                      path_.string(), system_message(errno)));
        }
    }

    static fs::path unique_sibling(const fs::path& target) {
        static std::atomic<unsigned long> counter{0};
        const auto name = fmt::format(".{}.tmp.{}.{}", target.filename().string(), ::getpid(), counter++);
        return target.parent_path() / name;
    }

    fs::path target_;
    fs::path path_;
    int fd_ = -1;
    bool committed_ = false;
};

// Makes the rename itself durable. The new file is already in place when
// this runs, so a failure here only weakens durability and is not reported.
void sync_directory_of(const fs::path& file) {
    const fs::path directory = file.has_parent_path() ? file.parent_path() : fs::path(".");
    const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

// ---------------------------------------------------------------- reading

// Binary input with every read checked, so a truncated file or a file that
// shrinks while being read is reported instead of yielding garbage.
class InputFile {
public:
    explicit InputFile(const fs::path& file) : file_(file) {
        std::error_code error;
        const auto status = fs::status(file, error);
        if (fs::exists(status) && !fs::is_regular_file(status)) fail(file_, "not a regular file");
        stream_.open(file, std::ios::binary);
        if (!stream_) fail(file_, fmt::format("cannot open for reading: {}", system_message(errno)));
        stream_.seekg(0, std::ios::end);
        const std::streamoff end = stream_.tellg();
        stream_.seekg(0, std::ios::beg);
        if (end < 0 || !stream_) fail(file_, "cannot determine the file size");
        size_ = static_cast<std::uint64_t>(end);
    }

    std::uint64_t size() const { return size_; }

    void read(void* destination, std::size_t count, std::string_view what) {
        if (count == 0) return;
        stream_.read(static_cast<char*>(destination), static_cast<std::streamsize>(count));
        const auto got = stream_.gcount();
        if (static_cast<std::size_t>(got) != count) {
            fail(file_, fmt::format("file ended while reading {}: got {} of {} bytes", what, got, count));
        }
    }

private:
    const fs::path& file_;
    std::ifstream stream_;
    std::uint64_t size_ = 0;
};

std::string read_header_text(InputFile& input, const fs::path& file) {
    if (input.size() < length_prefix_size) {
        fail(file, fmt::format("file is {} bytes, too short for the {}-byte header length", input.size(),
                               length_prefix_size));
    }
    std::uint64_t header_size = 0;
    input.read(&header_size, sizeof header_size, "the header length");
    const std::uint64_t available = input.size() - length_prefix_size;
    if (header_size > available) {
        fail(file, fmt::format("header length {} exceeds the {} bytes that follow it", header_size, available));
    }
    std::string text(header_size, '\0');
    input.read(text.data(), text.size(), "the header");
    return text;
}

// nlohmann::json keeps the last of duplicate keys silently; a header where a
// tensor or field appears twice is ambiguous, so it is rejected.
json parse_header(const fs::path& file, const std::string& text) {
    std::vector<std::set<std::string>> open_objects;
    std::optional<std::string> duplicate;
    auto track_keys = [&](int, json::parse_event_t event, json& value) {
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        if (event == json::parse_event_t::object_end) open_objects.pop_back();
        if (event == json::parse_event_t::key && !open_objects.back().insert(value.get<std::string>()).second) {
            if (!duplicate) duplicate = value.get<std::string>();
        }
        return true;
    };
    json header;
    try {
        header = json::parse(text, track_keys);
    } catch (const json::exception& error) {
        fail(file, fmt::format("header is not valid JSON: {}", error.what()));
    }
    if (duplicate) fail(file, fmt::format("header has duplicate key '{}'", *duplicate));
    if (!header.is_object()) fail(file, fmt::format("header must be a JSON object, found {}", header.type_name()));
    return header;
}

std::map<std::string, std::string> parse_metadata(const fs::path& file, const json& value) {
    if (!value.is_object()) {
        fail(file, fmt::format("'{}' must be an object of strings, found {}", metadata_key, value.type_name()));
    }
    std::map<std::string, std::string> metadata;
    for (const auto& [key, entry] : value.items()) {
        if (!entry.is_string()) {
            fail(file, fmt::format("'{}' entry '{}' must be a string, found {}", metadata_key, key, entry.type_name()));
        }
        metadata.emplace(key, entry.get<std::string>());
    }
    return metadata;
}

struct TensorEntry {
    std::string name;
    std::size_t dtype = 0;
    Shape shape;
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
};

// Validates one tensor's header entry against the data section.
class EntryParser {
public:
    EntryParser(const fs::path& file, const std::string& name, std::uint64_t data_size)
        : file_(file), name_(name), data_size_(data_size) {}

    TensorEntry parse(const json& entry) const {
        if (!entry.is_object()) reject(fmt::format("entry must be a JSON object, found {}", entry.type_name()));
        check_fields(entry);
        TensorEntry tensor{name_, parse_dtype(entry.at("dtype")), parse_shape(entry.at("shape"))};
        const std::uint64_t needed = needed_bytes(tensor);
        std::tie(tensor.begin, tensor.end) = parse_offsets(entry.at("data_offsets"));
        if (tensor.end - tensor.begin != needed) {
            reject(fmt::format("{} hold {} bytes but dtype {} with shape [{}] needs {} bytes",
                               describe_offsets(tensor.begin, tensor.end), tensor.end - tensor.begin,
                               dtypes[tensor.dtype].name, fmt::join(tensor.shape, ", "), needed));
        }
        return tensor;
    }

private:
    static constexpr std::array<std::string_view, 3> fields{"dtype", "shape", "data_offsets"};

    [[noreturn]] void reject(std::string_view what) const { fail(file_, fmt::format("tensor '{}': {}", name_, what)); }

    void check_fields(const json& entry) const {
        for (const auto& [key, value] : entry.items()) {
            if (std::find(fields.begin(), fields.end(), key) == fields.end()) {
                reject(fmt::format("unexpected field '{}'", key));
            }
        }
        for (const auto field : fields) {
            if (!entry.contains(field)) reject(fmt::format("missing field '{}'", field));
        }
    }

    std::size_t parse_dtype(const json& value) const {
        if (!value.is_string()) reject(fmt::format("'dtype' must be a string, found {}", value.type_name()));
        const auto& name = value.get_ref<const std::string&>();
        const auto found =
            std::find_if(dtypes.begin(), dtypes.end(), [&](const DtypeInfo& d) { return d.name == name; });
        if (found == dtypes.end()) reject(fmt::format("unsupported dtype '{}' (supported: F32, F64, I64)", name));
        return static_cast<std::size_t>(found - dtypes.begin());
    }

    Shape parse_shape(const json& value) const {
        if (!value.is_array()) reject(fmt::format("'shape' must be an array, found {}", value.type_name()));
        Shape shape;
        shape.reserve(value.size());
        for (std::size_t i = 0; i < value.size(); ++i) {
            const json& dimension = value[i];
            if (dimension.is_number_integer() && !dimension.is_number_unsigned()) {
                reject(fmt::format("shape entry {} is negative ({})", i, quote(dimension)));
            }
            if (!dimension.is_number_unsigned()) {
                reject(fmt::format("shape entry {} is not an integer ({})", i, quote(dimension)));
            }
            shape.push_back(dimension.get<std::size_t>());
        }
        return shape;
    }

    // Empty dimensions are counted as 1 in the overflow check: xtensor computes
    // strides from the other dimensions even when the array holds no element,
    // and those must fit its signed index type too.
    std::uint64_t needed_bytes(const TensorEntry& tensor) const {
        std::int64_t bytes = static_cast<std::int64_t>(dtypes[tensor.dtype].element_size);
        bool empty = false;
        for (const std::size_t dimension : tensor.shape) {
            empty = empty || dimension == 0;
            if (__builtin_mul_overflow(bytes, std::max<std::size_t>(dimension, 1), &bytes)) {
                reject(fmt::format("shape [{}] is too large: its size in bytes overflows 64 bits",
                                   fmt::join(tensor.shape, ", ")));
            }
        }
        return empty ? 0 : static_cast<std::uint64_t>(bytes);
    }

    std::pair<std::uint64_t, std::uint64_t> parse_offsets(const json& value) const {
        const bool valid =
            value.is_array() && value.size() == 2 && value[0].is_number_unsigned() && value[1].is_number_unsigned();
        if (!valid) reject(fmt::format("'data_offsets' must be two non-negative integers, found {}", quote(value)));
        const auto begin = value[0].get<std::uint64_t>();
        const auto end = value[1].get<std::uint64_t>();
        if (begin > end) reject(fmt::format("{} begin after they end", describe_offsets(begin, end)));
        if (end > data_size_) {
            reject(fmt::format("{} extend past the data section ({} bytes)", describe_offsets(begin, end), data_size_));
        }
        return {begin, end};
    }

    const fs::path& file_;
    const std::string& name_;
    std::uint64_t data_size_;
};

// The format requires the tensors to tile the data section exactly: no
// overlaps (two tensors aliasing bytes) and no unaccounted bytes.
void check_layout(const fs::path& file, std::vector<TensorEntry>& tensors, std::uint64_t data_size) {
    std::sort(tensors.begin(), tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
        return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    const TensorEntry* previous = nullptr;
    std::uint64_t covered = 0;
    for (const TensorEntry& tensor : tensors) {
        if (tensor.begin < covered) {
            fail(file, fmt::format("tensors '{}' ({}) and '{}' ({}) overlap", previous->name,
                                   describe_offsets(previous->begin, previous->end), tensor.name,
                                   describe_offsets(tensor.begin, tensor.end)));
        }
        if (tensor.begin > covered) {
            fail(file, fmt::format("{} unused bytes in the data section before tensor '{}' (offsets {} to {})",
                                   tensor.begin - covered, tensor.name, covered, tensor.begin));
        }
        covered = tensor.end;
        previous = &tensor;
    }
    if (covered < data_size && tensors.empty()) {
        fail(file, fmt::format("{} unused bytes in the data section, which holds no tensor", data_size));
    }
    if (covered < data_size) {
        fail(file, fmt::format("{} unused bytes in the data section after the last tensor (offsets {} to {})",
                               data_size - covered, covered, data_size));
    }
}

}  // namespace

void save_safetensors(const std::filesystem::path& file, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
    if (!file.has_filename()) fail(file, "path has no file name");
    if (tensors.contains(std::string(metadata_key))) {
        fail(file, fmt::format("a tensor cannot be named '{}', which is reserved for metadata", metadata_key));
    }
    std::string header;
    try {
        header = serialize_header(tensors, metadata);
    } catch (const json::exception& error) {
        fail(file, fmt::format("cannot encode the header: {}", error.what()));
    }
    const std::uint64_t header_size = header.size();

    TemporaryFile temporary(file);
    temporary.write(&header_size, sizeof header_size);
    temporary.write(header.data(), header.size());
    for (const auto& [name, array] : tensors) {
        std::visit([&](const auto& a) { temporary.write(a.data(), byte_size(a)); }, array);
    }
    temporary.commit();
    sync_directory_of(temporary.target());
}

TensorMap load_safetensors(const std::filesystem::path& file, std::map<std::string, std::string>* metadata) {
    InputFile input(file);
    const std::string text = read_header_text(input, file);
    const json header = parse_header(file, text);
    const std::uint64_t data_size = input.size() - length_prefix_size - text.size();

    std::map<std::string, std::string> found_metadata;
    std::vector<TensorEntry> entries;
    for (const auto& [name, value] : header.items()) {
        if (name == metadata_key) {
            found_metadata = parse_metadata(file, value);
        } else {
            entries.push_back(EntryParser(file, name, data_size).parse(value));
        }
    }
    check_layout(file, entries, data_size);

    // Sorted by offset and tiling the data section, so one sequential pass
    // reads every tensor straight into its own storage.
    TensorMap tensors;
    for (const TensorEntry& entry : entries) {
        StoredArray array = allocate(entry.dtype, entry.shape);
        std::visit([&](auto& a) { input.read(a.data(), byte_size(a), fmt::format("tensor '{}'", entry.name)); }, array);
        tensors.emplace(entry.name, std::move(array));
    }
    if (metadata != nullptr) *metadata = std::move(found_metadata);
    return tensors;
}

std::string dtype_name(const StoredArray& array) { return std::string(dtypes[array.index()].name); }

std::vector<std::size_t> shape_of(const StoredArray& array) {
    return std::visit([](const auto& a) { return std::vector<std::size_t>(a.shape().begin(), a.shape().end()); },
                      array);
}

template <class T>
const xt::xarray<T>& get_array(const TensorMap& tensors, const std::string& name) {
    const auto found = tensors.find(name);
    if (found == tensors.end()) throw SafetensorsError(fmt::format("tensor '{}' is missing", name));
    if (const auto* array = std::get_if<xt::xarray<T>>(&found->second)) return *array;
    const std::string expected = std::is_same_v<T, float> ? "F32" : std::is_same_v<T, double> ? "F64" : "I64";
    throw SafetensorsError(fmt::format("tensor '{}' is {}, expected {}", name, dtype_name(found->second), expected));
}

template const xt::xarray<float>& get_array(const TensorMap&, const std::string&);
template const xt::xarray<double>& get_array(const TensorMap&, const std::string&);
template const xt::xarray<std::int64_t>& get_array(const TensorMap&, const std::string&);

}  // namespace rw::nn
