// The checks and the plan of a whole-text request (CosyVoice's inference()), shared by every
// front door: the round scheduler's Generator and the TurboMind generator.
#pragma once

#include <cstdint>
#include <vector>

#include "core/options.h"
#include "core/tables.h"
#include "decode/bistream.h"

namespace cosyfast {

// CosyVoice's inference(): the whole text is known up front.
struct GenerationRequest {
  std::vector<int32_t> text_ids;             // the text to speak, without the prompt text
  std::vector<int32_t> prompt_text_ids;      // the voice prompt's transcript (may be empty)
  std::vector<int32_t> prompt_speech_tokens; // the voice prompt's speech tokens (may be empty)
  RequestOptions options;
};

// CosyVoice's inference_bistream(): the text follows as pieces (BistreamSession::PushText).
struct BistreamRequest {
  std::vector<int32_t> prompt_text_ids;       // the voice prompt's transcript (may be empty)
  std::vector<int32_t> prompt_speech_tokens;  // the voice prompt's speech tokens (may be empty)
  RequestOptions options;                     // min_len does not apply; see decode/bistream.h
  BistreamOptions mix;
};

struct PromptPlan {
  std::vector<int32_t> all_text;  // prompt text + text: the text rows' ids
  std::vector<float> rows;  // [sos, prompt text + text, task_id, prompt speech] x hidden (PlanPrompt)
  // With CheckPrompt's speech_as_ids: the prompt speech tokens, which then follow the text rows
  // as ids.
  std::vector<int32_t> speech_ids;
  int prompt_len = 0;       // every position: rows, then speech_ids
  int text_len = 0;         // text ids without the prompt text: sets min_len and max_len
  int min_len = 0, max_len = 0;
  RequestOptions options;   // max_len capped to the room the engine leaves
};

// Throws std::invalid_argument naming what is wrong. `session_limit`: the engine's positions per
// session; `fed_back_last`: whether the engine must also hold the last emitted token (a round
// engine feeds every token back before it samples the next; TurboMind's loop does not feed the
// last one). The plan's rows hold the whole prompt, the prompt speech as rows.
PromptPlan PlanPrompt(const PromptTables& tables, const SpeechVocab& vocab, const GenerationRequest& request,
                      int session_limit, bool fed_back_last);

// PlanPrompt without the rows (every check, the lengths, all_text, speech_ids): for a caller that
// must answer bad input now and builds the rows later, on another thread (TurboMind's generator:
// TurboMindPrompt(tables, plan), bf16 rows from the tables). `speech_as_ids`: the prompt speech
// goes as ids (an engine whose token embedding is the speech embedding looks them up itself).
PromptPlan CheckPrompt(const PromptTables& tables, const SpeechVocab& vocab, const GenerationRequest& request,
                       int session_limit, bool fed_back_last, bool speech_as_ids = false);

// The checks of a bistream request's start (its text pieces are checked as they come).
void CheckBistream(const PromptTables& tables, const SpeechVocab& vocab, const BistreamRequest& request);

}  // namespace cosyfast
