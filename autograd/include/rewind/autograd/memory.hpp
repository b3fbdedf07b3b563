#pragma once
// How freed tensor memory goes back to the system.
//
// A training step allocates and frees the same large buffers every iteration (activations
// saved for backward, gradients). glibc serves blocks above its mmap threshold with fresh
// mmap()s and unmaps them on free, and trims the heap top on free, so every step pays a page
// fault per 4 KiB page again, which made an LSTM training step several times slower in a
// virtual machine where page faults are expensive (docs/bench.md, "Keeping freed memory").
//
// With keep_freed_memory(true) (the default, set when the library loads) glibc keeps freed
// memory in the process heap for reuse: a caching allocator's effect, as deep-learning
// frameworks have, at the price that the process's resident size stays at its peak. It is a
// process-wide malloc setting (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD), so the
// environment variable REWIND_KEEP_FREED_MEMORY=0 leaves malloc untouched for applications
// that tune it themselves.

namespace rw {

// true: large blocks come from the heap and freed memory stays there. false: glibc's defaults.
void keep_freed_memory(bool keep);
bool keeps_freed_memory();

}  // namespace rw
