#include "decode/worker_pool.h"

#include <stdexcept>
#include <string>

namespace cosyfast {

WorkerPool::WorkerPool(int helpers) {
  if (helpers < 1) throw std::invalid_argument("a worker pool needs >= 1 helper, got " + std::to_string(helpers));
  threads_.reserve(static_cast<size_t>(helpers));
  for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { Help(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  start_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::Drain(const std::function<void(size_t)>& fn, size_t n) {
  for (size_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i);
}

void WorkerPool::ForEach(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    size_ = n;
    next_.store(0);
    running_ = static_cast<int>(threads_.size());
    ++generation_;
  }
  start_.notify_all();
  Drain(fn, n);
  // Every helper leaves the loop before this returns, so none touches fn or the rows afterwards.
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return running_ == 0; });
  job_ = nullptr;
}

void WorkerPool::Help() {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(size_t)>* job;
    size_t n;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
      n = size_;
    }
    Drain(*job, n);
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last = --running_ == 0;
    }
    if (last) done_.notify_one();
  }
}

}  // namespace cosyfast
