#include "decode/serial_executor.h"

#include <utility>

namespace cosyfast {

SerialExecutor::SerialExecutor() : thread_([this] { Run(); }) {}

SerialExecutor::~SerialExecutor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  wake_.notify_one();
  thread_.join();
  for (Job& job : jobs_) job(false);  // the thread is gone: no lock needed
}

void SerialExecutor::Post(Job job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
}

size_t SerialExecutor::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return jobs_.size();
}

void SerialExecutor::Run() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return closing_ || !jobs_.empty(); });
      if (closing_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    try {
      job(true);
    } catch (...) {
      // A job must not throw (it owes its request an end); one that does must not take the
      // process down with std::terminate on this thread.
    }
  }
}

}  // namespace cosyfast
