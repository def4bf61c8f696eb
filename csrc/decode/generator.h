// The front door of the core: one loaded model (prompt tables, speech vocabulary, sampler) over
// one engine and its scheduler lanes. Start() checks a request, assembles its prompt on the
// caller's thread (so bad input fails there, at once) and hands the session to a lane (PickLane:
// the lanes fill to a few sessions in order, then the least loaded takes each new one).
//
// Lanes: each is a scheduler thread with its own sessions, stepping them in rounds. With one
// lane the engine idles while the host reads, samples and submits; TurboMind also starts an
// iteration on the first request to arrive, splitting a round in two. Two lanes over one engine
// (engines whose concurrent_forward() is true) keep it busy: one lane's round runs while the
// other samples. A session stays in its lane, so its tokens do not depend on the lane count.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/options.h"
#include "core/process.h"
#include "core/tables.h"
#include "decode/bistream.h"
#include "decode/prompt_plan.h"
#include "decode/scheduler.h"
#include "decode/session.h"
#include "engines/engine.h"
#include "sampling/sampler.h"

namespace cosyfast {

class Generator {
 public:
  static constexpr int kDefaultLanes = 1;
  static constexpr int kMaxLanes = 16;
  // `lanes` in [1, kMaxLanes]; > 1 needs an engine whose concurrent_forward() is true.
  Generator(std::shared_ptr<const PromptTables> tables, SpeechVocab vocab, std::vector<float> decoder_bias,
            std::shared_ptr<Engine> engine, SchedulerOptions scheduler_options, int lanes = kDefaultLanes);
  // In a process forked after construction the lanes' threads do not exist: they are leaked,
  // not joined (joining would hang), and Start* throws std::runtime_error.
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Throws std::invalid_argument naming what is wrong with the request.
  std::shared_ptr<Session> Start(const GenerationRequest& request, std::shared_ptr<TokenSink> sink);
  // The same for a bistream request; also throws std::invalid_argument when the engine cannot
  // append rows to a live session.
  std::shared_ptr<BistreamSession> StartBistream(const BistreamRequest& request, std::shared_ptr<TokenSink> sink);

  // Summed over lanes.
  size_t live_sessions() const;
  size_t parked_sessions() const;
  SchedulerStats stats() const;
  int lanes() const { return static_cast<int>(lanes_.size()); }
  const Engine& engine() const { return *engine_; }
  const SpeechVocab& vocab() const { return sampler_->vocab(); }

 private:
  std::shared_ptr<const PromptTables> tables_;
  std::shared_ptr<const TokenSampler> sampler_;
  std::shared_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Scheduler>> lanes_;
  const uint64_t fork_count_ = ForkCount();

  Scheduler& PickLane();
};

}  // namespace cosyfast
