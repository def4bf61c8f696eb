// One thread that runs posted jobs one at a time, in the order they were posted. The TurboMind
// generator starts its requests on it (engines/turbomind/tm_generator.h): a start's prompt
// assembly and submission then cost the caller nothing, so a server's event loop admits a burst
// of requests without computing each one's prompt in turn (issue 19).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace cosyfast {

class SerialExecutor {
 public:
  // `run` is false for a job dropped because the executor is closing: the job must still end
  // what it stands for (a request's sink hears that it was cancelled). Jobs must not throw.
  using Job = std::function<void(bool run)>;

  SerialExecutor();
  // Close(), then joins (the job in progress finishes) and drops the queued jobs, each called
  // with false on the calling thread. In a forked child (core/process.h) the thread exists only
  // in the parent: nothing is joined or called.
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;

  // Throws std::runtime_error in a forked child (no thread would ever run the job).
  void Post(Job job);
  // The thread takes no job after the one it is running; the destructor drops the rest.
  void Close();

 private:
  void Run();

  const uint64_t fork_count_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;  // guarded by mutex_
  bool closing_ = false;  // guarded by mutex_
  std::unique_ptr<std::thread> thread_;  // last: started once the members above exist
};

}  // namespace cosyfast
