// The round scheduler: one thread that steps every live session together. Each round it admits
// waiting sessions (prefill), drops cancelled ones, asks every session for its input, runs one
// engine Forward over all of them, samples every row and retires the finished. Sessions join and
// leave between rounds. A session with nothing to run (a bistream session waiting for text) is
// parked: it keeps its engine cache but sits out the rounds until its doorbell rings.
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
#include "decode/worker_pool.h"
#include "engines/engine.h"
#include "sampling/sampler.h"

namespace cosyfast {

struct SchedulerOptions {
  int max_batch = 256;  // most sessions stepped in one round; the rest wait their turn to join
  // Helper threads that sample a large round's rows beside the lane's own thread (0: the lane
  // samples alone). Shortens the host work between two of the lane's engine rounds.
  int sample_threads = 0;
  void Validate() const;
};

// Rounds with fewer rows sample on the lane's thread: handing rows to helpers costs more than
// drawing them (~20 us a row).
constexpr size_t kParallelSampleMinRows = 16;

struct SchedulerStats {
  int64_t rounds = 0;
  int64_t tokens = 0;  // rows sampled (emitted tokens and stop tokens)
  int64_t sessions_finished = 0;
  int64_t parallel_rounds = 0;  // rounds whose rows the sample threads shared
};

class Scheduler;

// How a session reaches its scheduler from another thread (new text, a cancel) to be taken back
// from the parked set. Shared by the scheduler and its sessions, so that a session that
// outlives its scheduler (a Python stream kept after Model.close()) rings nothing instead of a
// freed object.
class Doorbell {
 public:
  explicit Doorbell(Scheduler* scheduler) : scheduler_(scheduler) {}
  // Wakes the session if it is parked; otherwise does nothing (it is in the rounds already).
  void Ring(int64_t session_id);
  // The scheduler is going away: later rings do nothing.
  void Disconnect();

 private:
  std::mutex mutex_;  // taken before the scheduler's own mutex, never after it
  Scheduler* scheduler_;
};

class Scheduler {
 public:
  Scheduler(std::shared_ptr<Engine> engine, std::shared_ptr<const TokenSampler> sampler, SchedulerOptions options);
  ~Scheduler();  // cancels every session and joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. The session waits until a round has room for it.
  void Submit(std::shared_ptr<Session> session);
  // Sessions submitted and not yet finished (waiting, decoding or parked).
  size_t live_sessions() const;
  // Of those, the parked ones.
  size_t parked_sessions() const;
  SchedulerStats stats() const;
  const Engine& engine() const { return *engine_; }

 private:
  friend class Doorbell;

  void Loop();
  // One round over `active_` (already holding the newly admitted sessions).
  void RunRound();
  void Retire(Session& session);
  // Moves a session with nothing to run to parked_ and tells it so, unless news arrived
  // meanwhile (then it goes back to the queue).
  void Park(std::shared_ptr<Session> session);
  // Doorbell: a parked session goes back to the front of the queue.
  void Resume(int64_t session_id);

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<const TokenSampler> sampler_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Session>> waiting_;  // guarded by mutex_
  std::unordered_map<int64_t, std::shared_ptr<Session>> parked_;  // guarded by mutex_
  bool stopping_ = false;                          // guarded by mutex_
  size_t live_ = 0;                                // guarded by mutex_
  SchedulerStats stats_;                           // guarded by mutex_

  std::shared_ptr<Doorbell> doorbell_;

  // Scheduler thread only.
  std::vector<std::shared_ptr<Session>> active_;
  std::vector<std::shared_ptr<Session>> batch_;  // the sessions of this round's inputs_
  std::vector<EngineInput> inputs_;
  std::vector<float> logits_;
  std::vector<uint8_t> outcome_;  // per row of the round: Outcome
  std::unique_ptr<WorkerPool> sample_pool_;  // null without sample threads
  std::thread thread_;
};

}  // namespace cosyfast
