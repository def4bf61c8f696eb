#include "engines/turbomind_inputs.h"

#include <stdexcept>
#include <string>

namespace cosyfast {

TurboMindPromptInputs TurboMindPrompt(const PromptTables& tables, const PromptPlan& plan) {
  TurboMindPromptInputs in;
  in.row_positions = static_cast<int>(plan.all_text.size()) + 2;  // sos, the text, task_id
  if (in.row_positions + static_cast<int>(plan.speech_ids.size()) != plan.prompt_len) {
    throw std::invalid_argument("a prompt plan of " + std::to_string(plan.prompt_len) + " positions with " +
                                std::to_string(plan.all_text.size()) + " text ids and " +
                                std::to_string(plan.speech_ids.size()) +
                                " speech ids: TurboMind's prompt needs the speech as ids (speech_as_ids)");
  }
  std::vector<PromptRow> rows;
  rows.reserve(static_cast<size_t>(in.row_positions));
  rows.push_back({PromptRow::Kind::kSos});
  for (int32_t t : plan.all_text) rows.push_back({PromptRow::Kind::kText, t});
  rows.push_back({PromptRow::Kind::kTaskId});
  AppendRows(tables, rows, in.rows);
  in.ids.assign(in.row_positions, 0);
  in.ids.insert(in.ids.end(), plan.speech_ids.begin(), plan.speech_ids.end());
  return in;
}

}  // namespace cosyfast
