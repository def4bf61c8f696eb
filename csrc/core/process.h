// Which side of a fork() this process is on. fork() copies memory but only the calling thread,
// so a model loaded before it has no scheduler threads in the child: waiting for its tokens
// would block forever and joining its threads would hang. Objects note ForkCount() when made
// and refuse to wait (or leak instead of joining) when it has changed.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>

namespace cosyfast {

namespace detail {
inline std::atomic<uint64_t> fork_count{0};
inline void CountFork() { fork_count.fetch_add(1, std::memory_order_relaxed); }
}  // namespace detail

// How many times this process's ancestry forked since the first call (the handler is registered
// then, so an object made before any fork sees every later one).
inline uint64_t ForkCount() {
  static const bool registered = pthread_atfork(nullptr, nullptr, &detail::CountFork) == 0;
  (void)registered;
  return detail::fork_count.load(std::memory_order_relaxed);
}

// The message for a call made in a child on an object of its parent.
inline const char* ForkedError() {
  return "this model was loaded before fork(): its scheduler threads exist only in the parent "
         "process; load the model again in the child (or start children with the 'spawn' method)";
}

}  // namespace cosyfast
