#include "decode/serial_executor.h"

#include <stdexcept>
#include <utility>

#include "core/process.h"

namespace cosyfast {

SerialExecutor::SerialExecutor()
    : fork_count_(ForkCount()), thread_(std::make_unique<std::thread>([this] { Run(); })) {}

SerialExecutor::~SerialExecutor() {
  if (fork_count_ != ForkCount()) {
    (void)thread_.release();  // the parent's thread: neither joinable nor ours to free here
    return;
  }
  Close();
  thread_->join();
  for (Job& job : jobs_) {  // the thread is gone: no lock needed
    try {
      job(false);
    } catch (...) {  // see Run: the remaining jobs still end their requests
    }
  }
}

void SerialExecutor::Post(Job job) {
  if (fork_count_ != ForkCount()) throw std::runtime_error(ForkedError());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void SerialExecutor::Close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  wake_.notify_one();
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
