#include "rewind/autograd/memory.hpp"

#include <cstdlib>
#include <cstring>

#include <malloc.h>

namespace rw {

namespace {

// glibc's defaults (mallopt(3)): 128 KiB for both, with the dynamic mmap threshold enabled;
// setting either value explicitly disables the dynamic adjustment, as intended.
constexpr int default_threshold = 128 * 1024;
// Blocks up to 32 MiB (glibc's largest allowed mmap threshold on 64-bit) come from the heap,
// and freed memory at the heap top is never trimmed, so the next step finds it mapped.
constexpr int keep_mmap_threshold = 32 * 1024 * 1024;
constexpr int keep_trim_threshold = 2147483647;

bool keeping = false;

const bool applied_at_load = [] {
    const char* setting = std::getenv("REWIND_KEEP_FREED_MEMORY");
    keep_freed_memory(!(setting && std::strcmp(setting, "0") == 0));
    return true;
}();

}  // namespace

void keep_freed_memory(bool keep) {
    mallopt(M_MMAP_THRESHOLD, keep ? keep_mmap_threshold : default_threshold);
    mallopt(M_TRIM_THRESHOLD, keep ? keep_trim_threshold : default_threshold);
    keeping = keep;
}

bool keeps_freed_memory() { return keeping; }

}  // namespace rw
