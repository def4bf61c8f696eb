#include "decode/bistream.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/messages.h"

namespace cosyfast {

void BistreamOptions::Validate() const {
  Require(text_group >= 1, "text_group (mix_ratio[0]) must be >= 1, got " + std::to_string(text_group));
  Require(speech_group >= 1, "speech_group (mix_ratio[1]) must be >= 1, got " + std::to_string(speech_group));
}

BistreamSession::BistreamSession(int64_t id, std::shared_ptr<const PromptTables> tables, const SpeechVocab& vocab,
                                 const std::vector<int32_t>& prompt_text_ids,
                                 std::vector<int32_t> prompt_speech_tokens, const RequestOptions& options,
                                 BistreamOptions mix, std::shared_ptr<TokenSink> sink)
    : Session(id, options, std::move(sink)),
      tables_(std::move(tables)),
      vocab_(vocab),
      mix_(mix),
      max_token_text_ratio_(options.length.max_token_text_ratio),
      max_len_override_(options.length.max_len_override),
      prompt_speech_(prompt_speech_tokens.begin(), prompt_speech_tokens.end()) {
  mix_.Validate();
  // No min_len in bistream (upstream has none); max_len is known once the text has ended,
  // unless the request fixed it.
  set_length_limits(0, max_len_override_ > 0 ? max_len_override_ : -1);
  lm_input_.push_back({Row::Kind::kSos});
  size_t text_start = 0;
  if (vocab_.required_text_id >= 0) {
    // CosyVoice3: the prompt text up to <|endofprompt|> goes into the first rows; the rest is
    // the start of text_cache.
    const auto eop = std::find(prompt_text_ids.begin(), prompt_text_ids.end(), vocab_.required_text_id);
    Require(eop != prompt_text_ids.end(), vocab_.name + " bistream needs the prompt text to contain id " +
                                              std::to_string(vocab_.required_text_id) +
                                              " (<|endofprompt|>), as CosyVoice3 does");
    text_start = static_cast<size_t>(eop - prompt_text_ids.begin()) + 1;
    for (size_t i = 0; i < text_start; ++i) lm_input_.push_back({Row::Kind::kText, prompt_text_ids[i]});
  }
  text_cache_.assign(prompt_text_ids.begin() + static_cast<std::ptrdiff_t>(text_start), prompt_text_ids.end());
  const size_t p = prompt_speech_.size();
  const size_t group = static_cast<size_t>(mix_.speech_group);
  next_fill_index_ = (p / group + 1) * group - p;
}

void BistreamSession::PushText(std::vector<int32_t> ids) {
  const int64_t rows = tables_->text_embedding.rows();
  for (int32_t t : ids) {
    Require(t >= 0 && t < rows, "text id " + std::to_string(t) + " is outside [0, " + std::to_string(rows) + ")");
  }
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (text_ended_) throw std::logic_error("the text has already ended: no piece can follow EndText");
    text_ids_received_ += static_cast<int64_t>(ids.size());
    inbox_.push_back(std::move(ids));
  }
  Ring();
}

void BistreamSession::EndText() {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (text_ended_) return;
    text_ended_ = true;
  }
  Ring();
}

bool BistreamSession::HasNews() const {
  if (cancel_requested()) return true;
  std::lock_guard<std::mutex> lock(inbox_mutex_);
  return !inbox_.empty() || text_ended_;
}

Session::Plan BistreamSession::PlanRound(EngineInput& input, int engine_limit) {
  const Plan plan = MoveText();
  return plan == Plan::kForward ? Feed(input, engine_limit) : plan;
}

Session::Plan BistreamSession::MoveText() {
  while (phase_ == Phase::kText) {
    std::vector<int32_t> piece;
    bool have_piece = false, ended = false;
    {
      std::lock_guard<std::mutex> lock(inbox_mutex_);
      if (!inbox_.empty()) {
        piece = std::move(inbox_.front());
        inbox_.pop_front();
        have_piece = true;
      }
      ended = text_ended_;
    }
    if (have_piece) {
      asked_for_text_ = false;
      TakePiece(piece);
    } else if (ended) {
      StartTail();
      if (state() == State::kFinished) return Plan::kDone;
    } else {
      return Plan::kIdle;  // OnParked asks for the next piece
    }
  }
  return Plan::kForward;
}

void BistreamSession::OnParked() {
  if (asked_for_text_) return;  // one request per piece: woken by a cancel, it asks no more
  asked_for_text_ = true;
  sink().OnNeedText();
}

void BistreamSession::TakePiece(const std::vector<int32_t>& piece) {
  const size_t text_group = static_cast<size_t>(mix_.text_group);
  text_cache_.insert(text_cache_.end(), piece.begin(), piece.end());
  // The prompt speech goes in first, each group behind 5 text ids.
  while (!prompt_speech_.empty() && text_cache_.size() >= text_group) {
    AppendText(text_group);
    AppendPromptSpeech(static_cast<size_t>(mix_.speech_group));
  }
  if (!prompt_speech_.empty()) return;  // not enough text for the next group: wait
  const bool after_fill = !out_.empty() && out_.back() == vocab_.fill_token;
  const bool only_sos = out_.empty() && lm_input_.size() == 1;
  if (after_fill || only_sos) {
    if (text_cache_.size() < text_group) return;  // upstream's `continue`: wait for more
    // After a fill, lm_input's rows are in the cache already: the text replaces them.
    if (after_fill) lm_input_.clear();
    AppendText(text_group);
  }
  phase_ = Phase::kDecode;
}

void BistreamSession::StartTail() {
  // Upstream concatenates onto lm_input as it stands: after a fill its rows are fed again.
  AppendText(text_cache_.size());
  lm_input_.push_back({Row::Kind::kTaskId});
  prompt_speech_.clear();  // upstream drops what was not interleaved
  phase_ = Phase::kTail;
  const int max_len = max_len_override_ > 0 ? max_len_override_ : ScaledLen(text_ids_received_, max_token_text_ratio_);
  set_length_limits(0, max_len);
  if (static_cast<int64_t>(decoded().size()) >= max_len) Finish(FinishReason::kMaxLen);
}

void BistreamSession::AppendText(size_t count) {
  for (size_t i = 0; i < count; ++i) {
    lm_input_.push_back({Row::Kind::kText, text_cache_.front()});
    text_cache_.pop_front();
  }
}

void BistreamSession::AppendPromptSpeech(size_t count) {
  for (size_t i = 0; i < count && !prompt_speech_.empty(); ++i) {
    lm_input_.push_back({Row::Kind::kSpeech, prompt_speech_.front()});
    prompt_speech_.pop_front();
  }
}

Session::Plan BistreamSession::Feed(EngineInput& input, int engine_limit) {
  const int n = static_cast<int>(lm_input_.size());
  if (positions_ + n > engine_limit) {
    Finish(FinishReason::kMaxLen);
    return Plan::kDone;
  }
  if (positions_ > 0 && n == 1 && lm_input_[0].kind == Row::Kind::kSpeech) {
    input.token = lm_input_[0].id;  // the engine's own table is the speech embedding
    return Plan::kForward;
  }
  rows_.clear();
  AppendRows(*tables_, lm_input_, rows_);
  input.prompt_rows = rows_.data();
  input.prompt_len = n;
  input.append = positions_ > 0;
  if (positions_ == 0) set_prompt_len(n);
  return Plan::kForward;
}

Session::Plan BistreamSession::PlanPhase(LoopPhase& phase, int engine_limit, size_t window) {
  const Plan plan = MoveText();
  if (plan != Plan::kForward) return plan;
  const int rows = static_cast<int>(fed_.size() + lm_input_.size());
  if (rows >= engine_limit) {
    Finish(FinishReason::kMaxLen);
    return Plan::kDone;
  }
  phase.rows.clear();
  AppendRows(*tables_, fed_, phase.rows);
  AppendRows(*tables_, lm_input_, phase.rows);
  phase.tail = phase_ == Phase::kTail;
  int room = engine_limit - rows;
  if (max_len() >= 0) room = std::min<int>(room, max_len() - static_cast<int>(decoded().size()));
  phase.forced_fill_at = -1;
  if (!phase.tail && next_fill_index_ >= out_.size()) {
    phase.forced_fill_at = static_cast<int>(next_fill_index_ - out_.size());
    room = std::min(room, phase.forced_fill_at + 1);  // the forced fill ends the phase
  }
  phase.max_tokens = std::max(room, 1);
  const size_t w = std::min(window, out_.size());
  phase.window.assign(out_.end() - static_cast<std::ptrdiff_t>(w), out_.end());
  phase_start_ = out_.size();
  if (positions_ == 0) set_prompt_len(rows);
  set_state(State::kDecoding);
  // The engine feeds lm_input first: from here it is in the history of every later phase.
  fed_.insert(fed_.end(), lm_input_.begin(), lm_input_.end());
  positions_ = static_cast<int>(fed_.size());
  return Plan::kForward;
}

void BistreamSession::CountFill(int32_t token) {
  const size_t group = static_cast<size_t>(mix_.speech_group) + 1;
  if (out_.size() == next_fill_index_) next_fill_index_ += group;
  if (token == vocab_.fill_token) next_fill_index_ = out_.size() + group;
}

bool BistreamSession::PhaseToken(int32_t token) {
  if (phase_ != Phase::kTail) CountFill(token);
  out_.push_back(token);
  return Emit(token);
}

bool BistreamSession::EndPhase(int32_t end_token) {
  // Every token the phase emitted was fed back before the next was drawn; the one that ended it
  // (a fill or stop id) was not, nor the last of a phase that ran out of room.
  const size_t emitted = out_.size() - phase_start_;
  const size_t fed = end_token >= 0 ? emitted : (emitted > 0 ? emitted - 1 : 0);
  for (size_t i = 0; i < fed; ++i) fed_.push_back({Row::Kind::kSpeech, out_[phase_start_ + i]});
  positions_ = static_cast<int>(fed_.size());
  if (state() == State::kFinished) return false;
  if (end_token < 0) {
    Finish(FinishReason::kMaxLen);
    return false;
  }
  if (phase_ == Phase::kTail || end_token != vocab_.fill_token) {
    out_.push_back(end_token);
    Finish(FinishReason::kStopToken);
    return false;
  }
  CountFill(end_token);
  out_.push_back(end_token);
  // lm_input keeps the rows of the phase's last forward: its last token, or its input.
  if (emitted > 0) lm_input_.assign(1, {Row::Kind::kSpeech, out_[out_.size() - 2]});
  phase_ = Phase::kText;
  return true;
}

int BistreamSession::SampleToken(const float* logits, const TokenSampler& sampler, bool text_phase) {
  // Upstream's ignore_eos in the text phase; the fill token stays drawable: it asks for text.
  return sampler.Sample(logits, text_phase ? StopMask::kAllButFill : StopMask::kNone, out_, sampling(), rng(),
                        scratch());
}

bool BistreamSession::Advance(const float* logits, const TokenSampler& sampler) {
  positions_ += static_cast<int>(lm_input_.size());
  set_state(State::kDecoding);
  if (phase_ == Phase::kTail) {
    const int token = SampleToken(logits, sampler, /*text_phase=*/false);
    out_.push_back(token);
    if (vocab_.IsStop(token)) {
      Finish(FinishReason::kStopToken);
      return false;
    }
    lm_input_.assign(1, {Row::Kind::kSpeech, token});
    return Emit(token);
  }
  // Forced when the group's speech is complete.
  const int token = out_.size() == next_fill_index_ ? vocab_.fill_token : SampleToken(logits, sampler, /*text_phase=*/true);
  CountFill(token);
  out_.push_back(token);
  if (token == vocab_.fill_token) {
    phase_ = Phase::kText;  // lm_input keeps the rows just fed
    return true;
  }
  if (token >= vocab_.speech_token_size) {
    Finish(FinishReason::kError, "token " + std::to_string(token) + " drawn while the text goes on");
    return false;
  }
  lm_input_.assign(1, {Row::Kind::kSpeech, token});
  return Emit(token);
}

}  // namespace cosyfast
