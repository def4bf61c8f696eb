#include "decode/session.h"

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

Session::Session(int64_t id, std::vector<float> prompt_rows, int prompt_len, int text_len,
                 const RequestOptions& options, std::shared_ptr<TokenSink> sink)
    : id_(id),
      prompt_rows_(std::move(prompt_rows)),
      prompt_len_(prompt_len),
      min_len_(options.length.MinLen(text_len)),
      max_len_(options.length.MaxLen(text_len)),
      sampling_(options.sampling),
      rng_(options.seed),
      sink_(std::move(sink)) {
  decoded_.reserve(max_len_ > 0 ? max_len_ : 0);
}

bool Session::Advance(const float* logits, const TokenSampler& sampler) {
  if (state_ == State::kWaiting) {
    state_ = State::kDecoding;
    prompt_rows_.clear();  // the engine holds the prompt in its cache from here on
    prompt_rows_.shrink_to_fit();
  }
  // CosyVoice: ignore_eos = (i < min_len), i = the number of tokens emitted so far.
  const bool ignore_eos = static_cast<int>(decoded_.size()) < min_len_;
  const int token = sampler.Sample(logits, ignore_eos, decoded_, sampling_, rng_, scratch_);
  if (sampler.vocab().IsStop(token)) {
    Finish(FinishReason::kStopToken);
    return false;
  }
  decoded_.push_back(token);
  if (!sink_->OnToken(token)) {
    Finish(FinishReason::kCancelled);
    return false;
  }
  if (static_cast<int>(decoded_.size()) >= max_len_) {
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

}  // namespace cosyfast
