#include "decode/token_queue.h"

#include <cmath>
#include <stdexcept>

#include "core/messages.h"

namespace cosyfast {

std::atomic<bool>& TokenQueue::RecordingArrivals() {
  static std::atomic<bool> on{false};
  return on;
}

void TokenQueue::RecordArrivals(bool on) { RecordingArrivals().store(on, std::memory_order_relaxed); }

bool TokenQueue::OnToken(int32_t token) {
  if (record_arrivals_) {
    const double at = std::chrono::duration<double>(std::chrono::steady_clock::now() - created_).count();
    std::lock_guard<std::mutex> lock(mutex_);
    tokens_.push_back(token);
    arrivals_.push_back(at);
  } else {
    std::lock_guard<std::mutex> lock(mutex_);
    tokens_.push_back(token);
  }
  ready_.notify_all();
  return true;
}

void TokenQueue::OnFinish(FinishReason reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    reason_ = reason;
    error_ = error;
  }
  ready_.notify_all();
}

void TokenQueue::OnNeedText() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    need_text_ = true;
  }
  ready_.notify_all();
}

void TokenQueue::ValidateTimeout(double timeout_s) {
  if (std::isnan(timeout_s)) {
    throw std::invalid_argument("timeout must be a number of seconds (negative or inf: wait forever), got nan");
  }
}

void TokenQueue::RequireParent() const {
  // Checked before the mutex is taken: a scheduler thread may have held it at the fork.
  if (ForkCount() != fork_count_) throw std::runtime_error(ForkedError());
}

template <typename Pred>
bool TokenQueue::WaitLocked(std::unique_lock<std::mutex>& lock, double timeout_s, Pred pred) {
  if (timeout_s < 0 || timeout_s >= kForeverSeconds) {
    ready_.wait(lock, pred);
    return true;
  }
  return ready_.wait_for(lock, std::chrono::duration<double>(timeout_s), pred);
}

std::optional<int32_t> TokenQueue::TakeLocked() {
  if (!tokens_.empty()) {
    const int32_t t = tokens_.front();
    tokens_.pop_front();
    return t;
  }
  if (need_text_ && !finished_) {
    need_text_ = false;
    return kNeedText;
  }
  return std::nullopt;
}

std::optional<int32_t> TokenQueue::NextEvent(double timeout_s) {
  ValidateTimeout(timeout_s);
  RequireParent();
  std::unique_lock<std::mutex> lock(mutex_);
  if (!WaitLocked(lock, timeout_s, [this] { return ReadyLocked(); })) {
    throw std::runtime_error("no token within " + Num(timeout_s) + " s");
  }
  return TakeLocked();
}

bool TokenQueue::TryNextEvent(std::optional<int32_t>* event) {
  RequireParent();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!ReadyLocked()) return false;
  *event = TakeLocked();
  return true;
}

bool TokenQueue::WaitReady(double timeout_s) {
  ValidateTimeout(timeout_s);
  RequireParent();
  std::unique_lock<std::mutex> lock(mutex_);
  return WaitLocked(lock, timeout_s, [this] { return ReadyLocked(); });
}

std::optional<int32_t> TokenQueue::AsToken(std::optional<int32_t> event) {
  if (event && *event == kNeedText) {
    throw std::logic_error("the session waits for more text: read a bistream session with NextEvent and answer "
                           "each request for text");
  }
  return event;
}

std::optional<int32_t> TokenQueue::Next(double timeout_s) { return AsToken(NextEvent(timeout_s)); }

bool TokenQueue::WaitFinished(double timeout_s) {
  ValidateTimeout(timeout_s);
  RequireParent();
  std::unique_lock<std::mutex> lock(mutex_);
  return WaitLocked(lock, timeout_s, [this] { return finished_; });
}

std::vector<double> TokenQueue::arrival_seconds() const {
  if (!record_arrivals_) {
    throw std::logic_error("arrival times are recorded only for requests started while recording is on "
                           "(cosyfast._core._record_arrivals(True), as cosyfast.bench does)");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  return arrivals_;
}

bool TokenQueue::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

FinishReason TokenQueue::reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return reason_;
}

std::string TokenQueue::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

}  // namespace cosyfast
