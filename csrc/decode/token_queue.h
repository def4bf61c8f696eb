// A TokenSink that queues tokens for a consumer on another thread (a Python iterator, say),
// so the scheduler thread never waits on the consumer.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "decode/session.h"

namespace cosyfast {

class TokenQueue : public TokenSink {
 public:
  // Returned by NextEvent when a bistream session waits for the next piece of text.
  static constexpr int32_t kNeedText = -1;

  bool OnToken(int32_t token) override;
  void OnFinish(FinishReason reason, const std::string& error) override;
  void OnNeedText() override;

  // Blocks until a token is ready (returned) or the session has finished and every token was
  // taken (nullopt). A negative timeout waits forever; on timeout throws std::runtime_error.
  // Throws std::logic_error if the session waits for text (a bistream session: use NextEvent).
  std::optional<int32_t> Next(double timeout_s = -1.0);
  // Like Next, and also returns kNeedText (once per request for text) after every token queued
  // before it.
  std::optional<int32_t> NextEvent(double timeout_s = -1.0);
  // Blocks until the session has finished (true) or the timeout passes (false); < 0 waits forever.
  bool WaitFinished(double timeout_s);

  // Seconds from this queue's creation (the request's start) to each token's arrival, measured
  // on the scheduler thread: latency figures that no consumer thread can skew.
  std::vector<double> arrival_seconds() const;

  bool finished() const;
  FinishReason reason() const;
  std::string error() const;

 private:
  const std::chrono::steady_clock::time_point created_ = std::chrono::steady_clock::now();
  mutable std::mutex mutex_;
  std::vector<double> arrivals_;
  std::condition_variable ready_;
  std::deque<int32_t> tokens_;
  bool finished_ = false;
  bool need_text_ = false;
  FinishReason reason_ = FinishReason::kNone;
  std::string error_;
};

}  // namespace cosyfast
