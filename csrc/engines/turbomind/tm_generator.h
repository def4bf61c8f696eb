// The front door of a model on the TurboMind engine: the counterpart of decode/generator.h for an
// engine that runs every utterance's decode loop itself. Start() checks a request on the caller's
// thread (the checks of the round scheduler's PlanPrompt: bad input throws there) and hands the
// rest to the generator's starter thread, in order: the prompt's rows, its options as
// TurboMind's CosyVoice sampling (bias, min_len mask, stop range, RAS, seed) and one TurboMind
// request. Tokens reach the sink from TurboMind's signal thread; a start that is cancelled
// before it ran, or that TurboMind refuses, ends on the starter thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/options.h"
#include "core/tables.h"
#include "decode/bistream.h"
#include "decode/prompt_plan.h"
#include "decode/serial_executor.h"
#include "decode/session.h"
#include "engines/turbomind/tm_engine.h"

namespace cosyfast::tm {

struct GeneratorStats {
  int64_t tokens = 0;
  int64_t sessions_finished = 0;
  int64_t stopped = 0, length = 0, cancelled = 0, failed = 0;  // finished sessions by reason
};

// Where a whole-text start's time goes (not bistreams), summed over the process: a serve burst
// is admitted one request after another on the event loop (issue 19), so the caller's part spaces
// the burst's first tokens; the starter thread's part spaces their submissions. Steady-clock
// nanoseconds; benchmarks/start_cost.py reads them.
struct StartTiming {
  int64_t starts = 0;       // submitted to TurboMind (a start cancelled or failed before is not counted)
  int64_t check_ns = 0;     // the caller: CheckPrompt (options, ids, lengths) and the handle
  int64_t wait_ns = 0;      // queued for the starter thread
  int64_t assemble_ns = 0;  // the starter: the rows, TurboMind's inputs (bf16), the spec
  int64_t submit_ns = 0;    // the starter: Engine::Start (TurboMind's request made and queued)
};
StartTiming GetStartTiming();

class Generator {
 public:
  // `decoder_bias`: decoder_rows values, or empty (CosyVoice3 has none).
  Generator(std::shared_ptr<const PromptTables> tables, SpeechVocab vocab, std::vector<float> decoder_bias,
            std::shared_ptr<Engine> engine);

  // CosyVoice's inference(). `native`: TurboMind's own top-k/top-p sampler with no bias, RAS,
  // min_len or stops, max_len tokens always (the benchmark's turbomind-native path). Throws
  // std::invalid_argument for bad input; returns once the request is checked and queued.
  std::shared_ptr<RequestHandle> Start(const GenerationRequest& request, std::shared_ptr<TokenSink> sink,
                                       bool native = false);

  // CosyVoice's inference_bistream(): the rules of decode/bistream.h, one TurboMind request per
  // decode phase (a piece's speech up to its fill token, or the tail up to a stop id). TurboMind
  // 0.16 keeps no cache between requests, so each phase is fed every row so far: a longer
  // prefill per phase, the same tokens' distribution.
  struct Bistream {
    std::shared_ptr<RequestHandle> request;
    std::shared_ptr<TextInput> text;
  };
  Bistream StartBistream(const BistreamRequest& request, std::shared_ptr<TokenSink> sink);

  size_t live_sessions() const;
  size_t parked_sessions() const;  // bistreams waiting for text
  GeneratorStats stats() const;
  const Engine& engine() const { return *engine_; }
  const SpeechVocab& vocab() const { return vocab_; }

  // Counters the requests bump from TurboMind's signal thread.
  struct Counters {
    std::atomic<int64_t> live{0}, parked{0}, tokens{0}, finished{0}, stopped{0}, length{0}, cancelled{0}, failed{0};
    // A session has ended: counted by reason and no longer live (call before its sink hears of
    // it, so that a woken caller sees it gone).
    void Ended(FinishReason reason);
  };

 private:
  std::shared_ptr<const PromptTables> tables_;
  SpeechVocab vocab_;
  std::shared_ptr<const std::vector<float>> bias_;  // shared by every request: uploaded once
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Counters> counters_;
  int stop_begin_ = 0, stop_end_ = 0;  // the stop ids as one range

  // The CosyVoice sampling every request of this model shares; the caller sets the per-request
  // fields (lengths, masks, stops).
  turbomind::CosyVoiceConfig SamplingConfig(const SamplingOptions& s) const;
  // A whole-text request's TurboMind spec from its checked plan (CheckPrompt), rows assembled
  // here: the starter thread's part of a start.
  RequestSpec PromptSpec(const PromptPlan& plan, bool native) const;

  // Last: destroyed first, while what its queued starts use is still there.
  SerialExecutor starter_;
};

}  // namespace cosyfast::tm
