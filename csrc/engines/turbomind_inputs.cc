#include "engines/turbomind_inputs.h"

#include <stdexcept>
#include <string>

#include "core/tables.h"  // ToBFloat16

namespace cosyfast {

TurboMindPromptInputs TurboMindPrompt(const PromptPlan& plan) {
  TurboMindPromptInputs in;
  in.row_positions = plan.prompt_len - static_cast<int>(plan.speech_ids.size());
  if (in.row_positions < 1 || plan.rows.size() % static_cast<size_t>(in.row_positions) != 0) {
    throw std::invalid_argument("a prompt plan of " + std::to_string(plan.prompt_len) + " positions with " +
                                std::to_string(plan.speech_ids.size()) + " speech ids cannot hold " +
                                std::to_string(plan.rows.size()) + " row values");
  }
  in.ids.assign(in.row_positions, 0);
  in.ids.insert(in.ids.end(), plan.speech_ids.begin(), plan.speech_ids.end());
  in.rows = ToBFloat16(plan.rows);
  return in;
}

}  // namespace cosyfast
