#include "decode/session.h"

#include "decode/scheduler.h"

namespace cosyfast {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStopToken: return "stop_token";
    case FinishReason::kMaxLen: return "max_len";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

Session::Session(int64_t id, const RequestOptions& options, std::shared_ptr<TokenSink> sink)
    : id_(id), sampling_(options.sampling), rng_(options.seed), sink_(std::move(sink)) {}

void Session::RequestCancel() {
  cancel_requested_.store(true);
  Ring();
}

void Session::Ring() {
  if (doorbell_) doorbell_->Ring(id_);
}

bool Session::Emit(int32_t token) {
  decoded_.push_back(token);
  if (!sink_->OnToken(token)) {
    Finish(FinishReason::kCancelled);
    return false;
  }
  if (max_len_ >= 0 && static_cast<int>(decoded_.size()) >= max_len_) {
    Finish(FinishReason::kMaxLen);
    return false;
  }
  return true;
}

void Session::Finish(FinishReason reason, const std::string& error) {
  if (state_ == State::kFinished) return;
  state_ = State::kFinished;
  reason_ = reason;
  error_ = error;
}

void Session::DeliverFinish() {
  if (delivered_) return;
  delivered_ = true;
  sink_->OnFinish(reason_, error_);
}

PromptSession::PromptSession(int64_t id, std::vector<float> prompt_rows, int prompt_len, int text_len,
                             const RequestOptions& options, std::shared_ptr<TokenSink> sink)
    : Session(id, options, std::move(sink)), prompt_rows_(std::move(prompt_rows)) {
  set_prompt_len(prompt_len);
  const int max_len = options.length.MaxLen(text_len);
  set_length_limits(options.length.MinLen(text_len), max_len);
  reserve_tokens(max_len);
}

Session::Plan PromptSession::PlanRound(EngineInput& input, int /*engine_limit*/) {
  // The Generator sized max_len to the engine's limit, so the limit needs no check here.
  if (state() == State::kWaiting) {
    input.prompt_rows = prompt_rows_.data();
    input.prompt_len = prompt_len();
  } else {
    input.token = decoded().back();
  }
  return Plan::kForward;
}

bool PromptSession::Advance(const float* logits, const TokenSampler& sampler) {
  if (state() == State::kWaiting) {
    set_state(State::kDecoding);
    prompt_rows_.clear();  // the engine holds the prompt in its cache from here on
    prompt_rows_.shrink_to_fit();
  }
  // CosyVoice: ignore_eos = (i < min_len), i = the number of tokens emitted so far.
  const StopMask mask = static_cast<int>(decoded().size()) < min_len() ? StopMask::kAll : StopMask::kNone;
  const int token = sampler.Sample(logits, mask, decoded(), sampling(), rng(), scratch());
  if (sampler.vocab().IsStop(token)) {
    Finish(FinishReason::kStopToken);
    return false;
  }
  return Emit(token);
}

}  // namespace cosyfast
