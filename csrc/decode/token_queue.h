// A TokenSink that queues tokens for a consumer on another thread (a Python iterator, say),
// so the scheduler thread never waits on the consumer.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/process.h"
#include "decode/session.h"

namespace cosyfast {

// Hears of queues that have something to take, instead of a reader blocked on each queue: one
// listener (decode/token_mux.h) serves every session of a server from one thread.
class ReadyListener {
 public:
  virtual ~ReadyListener() = default;
  // Called on the scheduler thread (quick, never blocking on the scheduler) each time the queue
  // registered under `key` goes from nothing to take to something: a token, a request for text
  // or the end. Called with no lock of the queue held.
  virtual void OnReady(int64_t key) = 0;
};

class TokenQueue : public TokenSink {
 public:
  // Returned by NextEvent when a bistream session waits for the next piece of text.
  static constexpr int32_t kNeedText = -1;

  bool OnToken(int32_t token) override;
  void OnFinish(FinishReason reason, const std::string& error) override;
  void OnNeedText() override;

  // Timeouts are seconds; a negative or infinite one (or one past kForeverSeconds) waits
  // forever, NaN throws std::invalid_argument. Every wait throws std::runtime_error in a process
  // forked after the queue was made: the scheduler that fills it stayed in the parent.
  static constexpr double kForeverSeconds = 1e9;  // ~32 years; larger would overflow chrono
  static void ValidateTimeout(double timeout_s);

  // Blocks until a token is ready (returned) or the session has finished and every token was
  // taken (nullopt). On timeout throws std::runtime_error. Throws std::logic_error if the
  // session waits for text (a bistream session: use NextEvent).
  std::optional<int32_t> Next(double timeout_s = -1.0);
  // Like Next, and also returns kNeedText (once per request for text) after every token queued
  // before it.
  std::optional<int32_t> NextEvent(double timeout_s = -1.0);
  // NextEvent without waiting: true, with *event set, when an event was ready.
  bool TryNextEvent(std::optional<int32_t>* event);
  // Blocks until TryNextEvent would succeed (true) or the timeout passes (false).
  bool WaitReady(double timeout_s);
  // Blocks until the session has finished (true) or the timeout passes (false).
  bool WaitFinished(double timeout_s);
  // Routes this queue's readiness to `listener` under `key` (once per nothing->something change,
  // and at once if something is ready now); the listener then takes everything with TakeAll. A
  // queue has at most one listener; it is held weakly (a gone listener is not called).
  void Attach(std::weak_ptr<ReadyListener> listener, int64_t key);
  // Everything ready without waiting: appends the tokens to *tokens, sets *need_text when the
  // session waits for text (after those tokens), and returns true once the session has finished
  // (every token taken).
  bool TakeAll(std::vector<int32_t>* tokens, bool* need_text);
  // `event` as Next returns it: kNeedText throws std::logic_error.
  static std::optional<int32_t> AsToken(std::optional<int32_t> event);

  // Seconds from this queue's creation (the request's start) to each token's arrival, measured
  // on the scheduler thread: latency figures that no consumer thread can skew. Recorded only by
  // queues made while RecordArrivals(true) is in force (benchmarks): the per-token path otherwise
  // reads no clock. Throws std::logic_error for a queue that does not record.
  std::vector<double> arrival_seconds() const;
  // Process-wide: whether queues made from now on record arrival times (default false).
  static void RecordArrivals(bool on);
  bool records_arrivals() const { return record_arrivals_; }

  bool finished() const;
  FinishReason reason() const;
  std::string error() const;

 private:
  template <typename Pred>
  bool WaitLocked(std::unique_lock<std::mutex>& lock, double timeout_s, Pred pred);
  bool ReadyLocked() const { return !tokens_.empty() || need_text_ || finished_; }
  std::optional<int32_t> TakeLocked();
  void RequireParent() const;
  // Calls the listener (with no lock held) when `was_ready` says the queue was empty before.
  void Notify(bool was_ready, const std::weak_ptr<ReadyListener>& listener, int64_t key);

  static std::atomic<bool>& RecordingArrivals();

  const bool record_arrivals_ = RecordingArrivals().load(std::memory_order_relaxed);
  const std::chrono::steady_clock::time_point created_ =
      record_arrivals_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  const uint64_t fork_count_ = ForkCount();
  mutable std::mutex mutex_;
  std::vector<double> arrivals_;
  std::condition_variable ready_;
  std::deque<int32_t> tokens_;
  bool finished_ = false;
  bool need_text_ = false;
  FinishReason reason_ = FinishReason::kNone;
  std::string error_;
  std::weak_ptr<ReadyListener> listener_;  // empty unless Attach was called
  int64_t listener_key_ = 0;
  bool attached_ = false;
};

}  // namespace cosyfast
