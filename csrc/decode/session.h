// One request's decode state. The base class holds what every request has (its id, sink, random
// generator, length limits, emitted tokens and end state); a subclass says what the engine runs
// each round and what a logits row does to the request:
//   PromptSession    CosyVoice's inference(): the whole text is known; prefill, then one step
//                    per token until a stop id or max_len.
//   BistreamSession  CosyVoice's inference_bistream() (decode/bistream.h): text arrives in
//                    pieces while speech is decoded.
// Owned by the scheduler thread once submitted, except for the members marked thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/options.h"
#include "engines/engine.h"
#include "sampling/rng.h"
#include "sampling/sampler.h"

namespace cosyfast {

class Doorbell;  // decode/scheduler.h

enum class FinishReason { kNone, kStopToken, kMaxLen, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);

// Streaming callback. Called on the scheduler thread, so it must be quick and must not block on
// the scheduler. OnToken returning false stops the session (as a cancel would).
class TokenSink {
 public:
  virtual ~TokenSink() = default;
  virtual bool OnToken(int32_t token) = 0;
  virtual void OnFinish(FinishReason reason, const std::string& error) = 0;
  // A bistream session has used up its text and waits for the next piece (or for the end of
  // the text). Called once per wait; the session sits out the rounds until it is answered.
  virtual void OnNeedText() {}
};

// What a caller holds of a request in flight, whichever loop runs it: a scheduler lane's Session
// or a TurboMind request (engines/turbomind/tm_generator.h).
class RequestHandle {
 public:
  virtual ~RequestHandle() = default;
  // Thread-safe request to stop; the tokens already out stay.
  virtual void RequestCancel() = 0;
  // Rows of the first engine input (the assembled prompt).
  virtual int prompt_len() const = 0;
  virtual int min_len() const = 0;
  // Most tokens the request emits; -1 while not yet known (a bistream whose text goes on).
  virtual int max_len() const = 0;
};

// The text side of a bistream request (CosyVoice's inference_bistream), whichever loop runs it.
class TextInput {
 public:
  virtual ~TextInput() = default;
  // Any thread. One piece of text: one item of upstream's text iterator (may be empty). Throws
  // std::invalid_argument for an id outside the text table, std::logic_error after EndText.
  virtual void PushText(std::vector<int32_t> ids) = 0;
  // Any thread. No more text: the request decodes the tail once the pieces before are used.
  virtual void EndText() = 0;
};

class Session : public RequestHandle {
 public:
  enum class State { kWaiting, kDecoding, kFinished };
  // What a session asks of the coming round.
  enum class Plan {
    kForward,  // run the EngineInput it filled in
    kIdle,     // nothing to run until new input arrives: the scheduler parks it (HasNews wakes it)
    kDone,     // it finished while planning (see finish_reason())
  };

  virtual ~Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int64_t id() const { return id_; }
  State state() const { return state_; }
  int prompt_len() const override { return prompt_len_; }
  int min_len() const override { return min_len_; }
  int max_len() const override { return max_len_; }
  // The tokens emitted so far (speech tokens only).
  const std::vector<int32_t>& decoded() const { return decoded_; }
  FinishReason finish_reason() const { return reason_; }

  // Scheduler thread. Fills `input` (session_id already set) for this round. `engine_limit` is
  // the engine's max_session_len: a session that would pass it finishes with kMaxLen instead.
  virtual Plan PlanRound(EngineInput& input, int engine_limit) = 0;
  // Scheduler thread. Samples from this round's logits row and advances the state machine.
  // Returns true while the session goes on.
  virtual bool Advance(const float* logits, const TokenSampler& sampler) = 0;
  // Thread-safe: whether a parked session must come back to the rounds (new input, or a cancel).
  virtual bool HasNews() const { return cancel_requested(); }
  // Scheduler thread, after a kIdle plan has parked the session (not if news arrived first):
  // the moment to ask for input, so that whoever answers finds the session parked.
  virtual void OnParked() {}

  // Thread-safe request to stop; honoured at the start of the next round, and wakes the session
  // if it is parked.
  void RequestCancel() override;
  bool cancel_requested() const { return cancel_requested_.load(); }

  // Records the end (the first reason wins). The sink hears of it only from DeliverFinish, which
  // the scheduler calls after the engine session is freed, so a caller woken by OnFinish sees
  // the session already gone from live_sessions().
  void Finish(FinishReason reason, const std::string& error = "");
  void DeliverFinish();

  // Set by the scheduler when the session is submitted, before any other thread sees it.
  void AttachDoorbell(std::shared_ptr<Doorbell> doorbell) { doorbell_ = std::move(doorbell); }

 protected:
  Session(int64_t id, const RequestOptions& options, std::shared_ptr<TokenSink> sink);

  // Emits one speech token to the sink. Returns false (the session finished as cancelled) when
  // the sink refuses more, or (finished with kMaxLen) when max_len tokens are out.
  bool Emit(int32_t token);
  // Asks the scheduler to take a parked session back (any thread).
  void Ring();

  TokenSink& sink() { return *sink_; }
  const SamplingOptions& sampling() const { return sampling_; }
  Rng& rng() { return rng_; }
  std::vector<float>& scratch() { return scratch_; }
  void set_state(State state) { state_ = state; }
  void set_prompt_len(int rows) { prompt_len_ = rows; }
  void reserve_tokens(int n) { decoded_.reserve(n > 0 ? n : 0); }
  void set_length_limits(int min_len, int max_len) {
    min_len_ = min_len;
    max_len_ = max_len;
  }

 private:
  int64_t id_;
  SamplingOptions sampling_;
  Rng rng_;
  std::shared_ptr<TokenSink> sink_;
  std::shared_ptr<Doorbell> doorbell_;
  int prompt_len_ = 0;
  int min_len_ = 0, max_len_ = -1;
  std::vector<int32_t> decoded_;
  std::vector<float> scratch_;
  State state_ = State::kWaiting;
  FinishReason reason_ = FinishReason::kNone;
  std::string error_;
  bool delivered_ = false;
  std::atomic<bool> cancel_requested_{false};
};

// CosyVoice's inference(): prefill [sos, prompt text + text, task_id, prompt speech], then one
// step per emitted token. Stops at a stop id (not emitted) or after max_len tokens; every stop id
// is masked while fewer than min_len tokens are out.
class PromptSession final : public Session {
 public:
  // `prompt_rows`: the assembled prompt (prompt_len x hidden). `text_len`: text ids without the
  // prompt text (CosyVoice's text_len - prompt_text_len), which sets min_len and max_len.
  PromptSession(int64_t id, std::vector<float> prompt_rows, int prompt_len, int text_len,
                const RequestOptions& options, std::shared_ptr<TokenSink> sink);

  Plan PlanRound(EngineInput& input, int engine_limit) override;
  bool Advance(const float* logits, const TokenSampler& sampler) override;

 private:
  std::vector<float> prompt_rows_;  // freed once the engine holds the prompt
};

}  // namespace cosyfast
