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

// Each event below: the change under the lock, then the blocked reader (if any) and the
// listener (if attached and the queue was empty) hear of it with the lock released.
bool TokenQueue::OnToken(int32_t token) {
  const double at = record_arrivals_
                        ? std::chrono::duration<double>(std::chrono::steady_clock::now() - created_).count()
                        : 0.0;
  bool was_ready = true;
  std::weak_ptr<ReadyListener> listener;
  int64_t key = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (attached_) {
      was_ready = ReadyLocked();
      if (!was_ready) listener = listener_, key = listener_key_;
    }
    tokens_.push_back(token);
    if (record_arrivals_) arrivals_.push_back(at);
  }
  ready_.notify_all();
  Notify(was_ready, listener, key);
  return true;
}

void TokenQueue::OnFinish(FinishReason reason, const std::string& error) {
  bool was_ready = true;
  std::weak_ptr<ReadyListener> listener;
  int64_t key = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (attached_) {
      was_ready = ReadyLocked();
      if (!was_ready) listener = listener_, key = listener_key_;
    }
    finished_ = true;
    reason_ = reason;
    error_ = error;
  }
  ready_.notify_all();
  Notify(was_ready, listener, key);
}

void TokenQueue::OnNeedText() {
  bool was_ready = true;
  std::weak_ptr<ReadyListener> listener;
  int64_t key = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (attached_) {
      was_ready = ReadyLocked();
      if (!was_ready) listener = listener_, key = listener_key_;
    }
    need_text_ = true;
  }
  ready_.notify_all();
  Notify(was_ready, listener, key);
}

void TokenQueue::Notify(bool was_ready, const std::weak_ptr<ReadyListener>& listener, int64_t key) {
  if (was_ready) return;  // the listener was told when the queue last became non-empty
  if (auto l = listener.lock()) l->OnReady(key);
}

void TokenQueue::Attach(std::weak_ptr<ReadyListener> listener, int64_t key) {
  bool ready;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (attached_) throw std::logic_error("this stream is already attached to a token multiplexer");
    attached_ = true;
    listener_ = listener;
    listener_key_ = key;
    ready = ReadyLocked();
  }
  // Events before the attach were not announced: announce them now.
  Notify(!ready, listener, key);
}

bool TokenQueue::TakeAll(std::vector<int32_t>* tokens, bool* need_text) {
  RequireParent();
  std::lock_guard<std::mutex> lock(mutex_);
  tokens->insert(tokens->end(), tokens_.begin(), tokens_.end());
  tokens_.clear();
  *need_text = need_text_ && !finished_;
  need_text_ = false;
  return finished_;
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
