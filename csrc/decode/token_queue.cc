#include "decode/token_queue.h"

#include <stdexcept>

namespace cosyfast {

bool TokenQueue::OnToken(int32_t token) {
  const double at = std::chrono::duration<double>(std::chrono::steady_clock::now() - created_).count();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tokens_.push_back(token);
    arrivals_.push_back(at);
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

std::optional<int32_t> TokenQueue::NextEvent(double timeout_s) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto ready = [this] { return !tokens_.empty() || need_text_ || finished_; };
  if (timeout_s < 0) {
    ready_.wait(lock, ready);
  } else if (!ready_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready)) {
    throw std::runtime_error("no token within " + std::to_string(timeout_s) + " s");
  }
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

std::optional<int32_t> TokenQueue::Next(double timeout_s) {
  const std::optional<int32_t> event = NextEvent(timeout_s);
  if (event && *event == kNeedText) {
    throw std::logic_error("the session waits for more text: read a bistream session with NextEvent and answer "
                           "each request for text");
  }
  return event;
}

bool TokenQueue::WaitFinished(double timeout_s) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto done = [this] { return finished_; };
  if (timeout_s < 0) {
    ready_.wait(lock, done);
    return true;
  }
  return ready_.wait_for(lock, std::chrono::duration<double>(timeout_s), done);
}

std::vector<double> TokenQueue::arrival_seconds() const {
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
