#pragma once
// Runs a function on a thread with a small stack (256 KiB, a 32nd of Linux's default), so a
// recursion that grows with a graph's length overflows it at once instead of after millions
// of frames. Exceptions come back to the caller; assertions belong in the caller's thread.

#include <pthread.h>

#include <cstddef>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>

namespace rw::test {

inline constexpr std::size_t kSmallStack = 256 * 1024;

inline void run_on_small_stack(const std::function<void()>& work, std::size_t stack_bytes = kSmallStack) {
    struct Job {
        const std::function<void()>* work;
        std::exception_ptr error;
    } job{&work, nullptr};
    auto entry = [](void* argument) -> void* {
        auto* job = static_cast<Job*>(argument);
        try {
            (*job->work)();
        } catch (...) {
            job->error = std::current_exception();
        }
        return nullptr;
    };
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    int status = pthread_attr_setstacksize(&attributes, stack_bytes);
    pthread_t thread;
    if (status == 0) status = pthread_create(&thread, &attributes, entry, &job);
    pthread_attr_destroy(&attributes);
    if (status != 0) throw std::runtime_error("run_on_small_stack: pthread error " + std::to_string(status));
    pthread_join(thread, nullptr);
    if (job.error) std::rethrow_exception(job.error);
}

}  // namespace rw::test
