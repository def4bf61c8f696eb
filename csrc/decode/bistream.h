// CosyVoice2/3's inference_bistream (cosyvoice/llm/llm.py, Qwen2LM): the text arrives in pieces
// (an iterator) while speech tokens are decoded, text and speech interleaved 5 : 15.
//
// The rules, as upstream runs them. `lm_input` is upstream's variable: the rows the next forward
// feeds, all of them, whether or not an earlier forward fed them already.
//   Start: lm_input = [sos] (CV3: [sos, prompt text up to and including <|endofprompt|>]);
//     text_cache = the prompt text (CV3: what follows <|endofprompt|>);
//     next_fill_index = (P / 15 + 1) * 15 - P, P = prompt speech tokens (integer division).
//   Each piece of text (one iteration of upstream's `for this_text in text`):
//     1. text_cache += piece.
//     2. While prompt speech remains and text_cache holds >= 5 ids: lm_input += 5 text rows +
//        the next (up to) 15 prompt speech rows.
//     3. If prompt speech remains: wait for the next piece.
//     4. If the last decoded token is the fill token, or nothing was decoded and lm_input is
//        exactly one row: with >= 5 ids in text_cache, take 5 as text rows, which replace
//        lm_input after a fill (its rows are in the cache already) and extend it otherwise;
//        with fewer, wait for the next piece.
//     5. Decode: forward lm_input; when len(out) == next_fill_index the token is the fill token
//        (forced, no draw) and next_fill_index += 16; otherwise sample with the eos-like stop ids
//        masked. A fill token (forced or sampled) sets next_fill_index = len(out) + 16, joins
//        `out` and ends this piece's decoding without being emitted or fed back; lm_input keeps
//        the rows of that last forward. Any other token is emitted and becomes lm_input.
//   At most one 5-id group is taken per piece after the prompt speech: ids left over wait for
//   later pieces, or the tail.
//   Pieces come from the caller (PushText). When the session needs one and has none it sits
//   out the rounds (parked, keeping its cache) and asks its sink once (OnNeedText): exactly when
//   upstream would advance its iterator.
//   End of text: lm_input += all of text_cache + [task_id]; prompt speech not yet interleaved is
//     dropped; decode (no min_len) until a stop id, which ends the session and is not emitted.
//   So after a fill, the tail feeds the rows of the fill's forward a second time: upstream does,
//   and it is reproduced.
//   `out` (the RAS window) holds the fill tokens too, as upstream's out_tokens does.
//
// Documented differences from upstream (which raises ValueError on these tokens):
//   - the text phase masks every stop id except the fill token (upstream masks only index 6561,
//     and fails if 6562 is drawn; CV3 upstream masks its sos 6561);
//   - the tail ends on any stop id (upstream ends on eos and fails on the others);
//   - upstream's tail has no length limit; here it stops at max_len: the request's
//     max_len_override if set, else int(text ids * max_token_text_ratio), and at the engine's
//     session limit. The override also caps the text phase.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "core/tables.h"
#include "decode/session.h"

namespace cosyfast {

struct BistreamOptions {
  int text_group = 5;     // mix_ratio[0]: text ids per group
  int speech_group = 15;  // mix_ratio[1]: speech tokens per group
  void Validate() const;
};

class BistreamSession final : public Session, public TextInput {
 public:
  BistreamSession(int64_t id, std::shared_ptr<const PromptTables> tables, const SpeechVocab& vocab,
                  const std::vector<int32_t>& prompt_text_ids, std::vector<int32_t> prompt_speech_tokens,
                  const RequestOptions& options, BistreamOptions mix, std::shared_ptr<TokenSink> sink);

  void PushText(std::vector<int32_t> ids) override;
  void EndText() override;

  Plan PlanRound(EngineInput& input, int engine_limit) override;
  bool Advance(const float* logits, const TokenSampler& sampler) override;
  bool HasNews() const override;
  void OnParked() override;

  // The same rules for an engine that runs a whole decode phase in its own loop and keeps no
  // cache between requests (the TurboMind engine): one request per phase (a piece's speech, up
  // to a fill token; or the tail, up to a stop id), fed every row so far.
  struct LoopPhase {
    std::vector<float> rows;       // every row fed so far, then lm_input: rows x hidden
    bool tail = false;             // false: the text phase (every stop id but the fill masked)
    int forced_fill_at = -1;       // the fill token is forced as this phase's token of this index
    int max_tokens = 0;            // most tokens the phase may draw, the one that ends it included
    std::vector<int32_t> window;   // the last tokens drawn before it (RAS), oldest first
  };
  // Takes text as PlanRound does. kForward: `phase` is filled; kIdle: it needs the next piece
  // (OnParked asks for it); kDone: it finished. `window` tokens at most go into phase.window.
  Plan PlanPhase(LoopPhase& phase, int engine_limit, size_t window);
  // One token the phase drew and emitted (not the fill or stop that ends it). Returns false
  // when the session finished (max_len, or the sink refused it).
  bool PhaseToken(int32_t token);
  // The phase has ended: on `end_token` (the fill or stop id drawn last), or, with -1, having
  // drawn max_tokens. Returns whether the session goes on (the next phase, or more text).
  bool EndPhase(int32_t end_token);

 private:
  using Row = PromptRow;  // one row of lm_input
  enum class Phase {
    kText,    // between pieces: the next piece decides what happens
    kDecode,  // decoding the current piece's speech, up to a fill token
    kTail,    // the text has ended: decoding to a stop id
  };

  // Upstream's for-loop body for one piece. Leaves phase_ at kText (wait) or kDecode.
  void TakePiece(const std::vector<int32_t>& piece);
  void StartTail();
  void AppendText(size_t count);
  void AppendPromptSpeech(size_t count);
  // Runs the text rules until a decode phase is due (kForward), text is needed or it ends.
  Plan MoveText();
  // Fills `input` with lm_input_ (a token step where it is one fed-back speech token).
  Plan Feed(EngineInput& input, int engine_limit);
  // The bookkeeping of one drawn token in the text phase (forced or drawn fill, or speech).
  void CountFill(int32_t token);
  int SampleToken(const float* logits, const TokenSampler& sampler, bool text_phase);

  std::shared_ptr<const PromptTables> tables_;
  SpeechVocab vocab_;
  BistreamOptions mix_;
  double max_token_text_ratio_;
  int max_len_override_;

  // Guarded by inbox_mutex_: what the caller's thread hands over.
  mutable std::mutex inbox_mutex_;
  std::deque<std::vector<int32_t>> inbox_;
  bool text_ended_ = false;
  int64_t text_ids_received_ = 0;  // ids in all pieces (not the prompt text): the tail's max_len

  // Scheduler thread only.
  Phase phase_ = Phase::kText;
  bool asked_for_text_ = false;  // OnNeedText sent and not yet answered
  std::deque<int32_t> text_cache_;
  std::deque<int32_t> prompt_speech_;
  std::vector<Row> lm_input_;
  std::vector<float> rows_;  // lm_input_ as floats for the engine, alive until Advance
  std::vector<int32_t> out_; // upstream's out_tokens: emitted tokens and fill tokens
  size_t next_fill_index_ = 0;
  int positions_ = 0;        // rows in the engine's cache
  // Loop-phase engines: every row fed so far, and where the current phase's tokens start in out_.
  std::vector<Row> fed_;
  size_t phase_start_ = 0;
};

}  // namespace cosyfast
