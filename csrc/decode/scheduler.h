// The round scheduler: one thread that steps every live session together. Each round it admits
// waiting sessions (prefill), drops cancelled ones, runs one engine Forward over all of them,
// samples every row and retires the finished. Sessions join and leave between rounds.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "decode/session.h"
#include "engines/engine.h"
#include "sampling/sampler.h"

namespace cosyfast {

struct SchedulerOptions {
  int max_batch = 256;  // most sessions stepped in one round; the rest wait their turn to join
  void Validate() const;
};

struct SchedulerStats {
  int64_t rounds = 0;
  int64_t tokens = 0;  // rows sampled (emitted tokens and stop tokens)
  int64_t sessions_finished = 0;
};

class Scheduler {
 public:
  Scheduler(std::shared_ptr<Engine> engine, std::shared_ptr<const TokenSampler> sampler, SchedulerOptions options);
  ~Scheduler();  // cancels every session and joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. The session waits until a round has room for it.
  void Submit(std::shared_ptr<Session> session);
  // Sessions submitted and not yet finished (waiting or decoding).
  size_t live_sessions() const;
  SchedulerStats stats() const;
  const Engine& engine() const { return *engine_; }

 private:
  void Loop();
  // One round over `active_` (already holding the newly admitted sessions).
  void RunRound();
  void Retire(Session& session);

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<const TokenSampler> sampler_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Session>> waiting_;  // guarded by mutex_
  bool stopping_ = false;                          // guarded by mutex_
  size_t live_ = 0;                                // guarded by mutex_
  SchedulerStats stats_;                           // guarded by mutex_

  // Scheduler thread only.
  std::vector<std::shared_ptr<Session>> active_;
  std::vector<EngineInput> inputs_;
  std::vector<float> logits_;
  std::thread thread_;
};

}  // namespace cosyfast
