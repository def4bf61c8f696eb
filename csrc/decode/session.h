// One request's decode state: the assembled prompt, the length rules, the tokens so far and the
// session's own random generator. Owned by the scheduler thread once submitted.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/options.h"
#include "sampling/rng.h"
#include "sampling/sampler.h"

namespace cosyfast {

enum class FinishReason { kNone, kStopToken, kMaxLen, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);

// Streaming callback. Called on the scheduler thread, so it must be quick and must not block on
// the scheduler. OnToken returning false stops the session (as a cancel would).
class TokenSink {
 public:
  virtual ~TokenSink() = default;
  virtual bool OnToken(int32_t token) = 0;
  virtual void OnFinish(FinishReason reason, const std::string& error) = 0;
};

class Session {
 public:
  enum class State { kWaiting, kDecoding, kFinished };

  // `prompt_rows`: the assembled prompt (rows x hidden). `text_len`: text ids without the prompt
  // text (CosyVoice's text_len - prompt_text_len), which sets min_len and max_len.
  Session(int64_t id, std::vector<float> prompt_rows, int prompt_len, int text_len, const RequestOptions& options,
          std::shared_ptr<TokenSink> sink);

  int64_t id() const { return id_; }
  State state() const { return state_; }
  int prompt_len() const { return prompt_len_; }
  int min_len() const { return min_len_; }
  int max_len() const { return max_len_; }
  const std::vector<int32_t>& decoded() const { return decoded_; }
  FinishReason finish_reason() const { return reason_; }

  // The engine input for this round: the prompt on the first round, the last token after.
  const float* prompt_rows() const { return prompt_rows_.data(); }
  int32_t last_token() const { return decoded_.back(); }

  // Samples from this round's logits row and advances the state machine. Returns true while the
  // session goes on.
  bool Advance(const float* logits, const TokenSampler& sampler);

  // Thread-safe request to stop; honoured at the start of the next round.
  void RequestCancel() { cancel_requested_.store(true); }
  bool cancel_requested() const { return cancel_requested_.load(); }

  // Records the end (the first reason wins). The sink hears of it only from DeliverFinish, which
  // the scheduler calls after the engine session is freed, so a caller woken by OnFinish sees
  // the session already gone from live_sessions().
  void Finish(FinishReason reason, const std::string& error = "");
  void DeliverFinish();

 private:
  int64_t id_;
  std::vector<float> prompt_rows_;
  int prompt_len_;
  int min_len_, max_len_;
  SamplingOptions sampling_;
  Rng rng_;
  std::shared_ptr<TokenSink> sink_;
  std::vector<int32_t> decoded_;
  std::vector<float> scratch_;
  State state_ = State::kWaiting;
  FinishReason reason_ = FinishReason::kNone;
  std::string error_;
  bool delivered_ = false;
  std::atomic<bool> cancel_requested_{false};
};

}  // namespace cosyfast
