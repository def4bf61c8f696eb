// A few helper threads that run one indexed loop at a time together with the calling thread.
// Made for a round's sampling: every row belongs to its own session (its own RNG and history), so
// rows may be drawn in any order on any thread and every session draws what it would alone.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cosyfast {

class WorkerPool {
 public:
  explicit WorkerPool(int helpers);  // helpers >= 1: threads besides the caller
  ~WorkerPool();                     // joins the helpers
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls fn(i) once for every i in [0, n), spread over the helpers and the calling thread, and
  // returns when every call has returned. fn must not throw. One loop at a time: the pool belongs
  // to one caller (a scheduler lane).
  void ForEach(size_t n, const std::function<void(size_t)>& fn);

 private:
  void Help();
  void Drain(const std::function<void(size_t)>& fn, size_t n);

  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(size_t)>* job_ = nullptr;  // guarded by mutex_
  size_t size_ = 0;                                   // guarded by mutex_
  uint64_t generation_ = 0;                           // guarded by mutex_: one per loop
  int running_ = 0;                                   // guarded by mutex_: helpers inside a loop
  bool stopping_ = false;                             // guarded by mutex_
  std::atomic<size_t> next_{0};                       // the next index to claim
  std::vector<std::thread> threads_;
};

}  // namespace cosyfast
