#include "decode/prompt_plan.h"

#include <stdexcept>
#include <string>

namespace cosyfast {

PromptPlan CheckPrompt(const PromptTables& tables, const SpeechVocab& vocab, const GenerationRequest& request,
                       int session_limit, bool fed_back_last, bool speech_as_ids) {
  request.options.Validate();
  if (request.text_ids.empty()) throw std::invalid_argument("the text is empty: give at least one text id");
  PromptPlan plan;
  plan.all_text = request.prompt_text_ids;
  plan.all_text.insert(plan.all_text.end(), request.text_ids.begin(), request.text_ids.end());
  CheckPromptIds(tables, vocab, plan.all_text, request.prompt_speech_tokens);
  if (speech_as_ids) plan.speech_ids = request.prompt_speech_tokens;
  // sos + text + task_id + the prompt speech (as rows or as ids)
  plan.prompt_len = static_cast<int>(2 + plan.all_text.size() + request.prompt_speech_tokens.size());
  if (plan.prompt_len >= session_limit) {
    throw std::invalid_argument("the prompt has " + std::to_string(plan.prompt_len) +
                                " positions (sos + prompt text + text + task_id + prompt speech), which leaves no room under the "
                                "session limit of " + std::to_string(session_limit) + " positions");
  }
  plan.options = request.options;
  plan.text_len = static_cast<int>(request.text_ids.size());
  // A round engine's last fed-back token sits at prompt_len + max_len - 2; TurboMind's last
  // drawn token at prompt_len + max_len - 1.
  const int room = session_limit - plan.prompt_len + (fed_back_last ? 1 : 0);
  LengthOptions& length = plan.options.length;
  if (length.MaxLen(plan.text_len) > room) length.max_len_override = room;
  plan.max_len = length.MaxLen(plan.text_len);
  if (plan.max_len < 1) {
    throw std::invalid_argument("max_len is " + std::to_string(plan.max_len) + " for a text of " +
                                std::to_string(plan.text_len) + " ids: nothing would be generated");
  }
  plan.min_len = length.MinLen(plan.text_len);
  return plan;
}

PromptPlan PlanPrompt(const PromptTables& tables, const SpeechVocab& vocab, const GenerationRequest& request,
                      int session_limit, bool fed_back_last) {
  PromptPlan plan = CheckPrompt(tables, vocab, request, session_limit, fed_back_last, /*speech_as_ids=*/false);
  plan.rows = AssemblePrompt(tables, plan.all_text, request.prompt_speech_tokens);
  return plan;
}

void CheckBistream(const PromptTables& tables, const SpeechVocab& vocab, const BistreamRequest& request) {
  request.options.Validate();
  request.mix.Validate();
  for (int32_t t : request.prompt_speech_tokens) {
    if (t < 0 || t >= vocab.speech_token_size) {
      throw std::invalid_argument("prompt speech token " + std::to_string(t) + " is outside [0, " +
                                  std::to_string(vocab.speech_token_size) + ")");
    }
  }
  const int64_t text_rows = tables.text_embedding.rows();
  for (int32_t t : request.prompt_text_ids) {
    if (t < 0 || t >= text_rows) {
      throw std::invalid_argument("prompt text id " + std::to_string(t) + " is outside [0, " +
                                  std::to_string(text_rows) + ")");
    }
  }
}

}  // namespace cosyfast
