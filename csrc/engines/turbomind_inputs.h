// What TurboMind is given for a whole-text prompt (engines/turbomind/tm_generator.cc sends it):
// an id for every position and bf16 rows for the positions no id stands for. Pure host code, no
// CUDA: tested on the CPU (tests/test_turbomind_layout.py) against the all-rows prompt.
//
// The voice prompt's speech tokens go as ids: TurboMind's token embedding is the speech
// embedding (engines/turbomind_layout.h, TurboMindEmbedding), so it looks up the very bf16 bytes
// their rows would hold. Only sos, the text and task_id travel as rows. Why: TurboMind copies
// every row through a pinned staging buffer on its engine thread before the prefill (lmdeploy
// 0.16 models/input_processor.cc, Setup), and the speech is most of a CosyVoice prompt.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tables.h"
#include "decode/prompt_plan.h"

namespace cosyfast {

struct TurboMindPromptInputs {
  std::vector<int32_t> ids;    // plan.prompt_len: 0 (a placeholder) where a row goes, then the speech ids
  std::vector<uint16_t> rows;  // row_positions x hidden, bf16
  int row_positions = 0;       // the rows fill positions [0, row_positions)
};

// From a plan made with speech_as_ids (CheckPrompt's is enough: the rows are built here, from the
// tables straight to bf16, without the float rows: one pass and half the memory, on the
// generator's starter thread). Throws std::invalid_argument for a plan with prompt speech but no
// speech ids (its speech went as rows), or a text id outside the table.
TurboMindPromptInputs TurboMindPrompt(const PromptTables& tables, const PromptPlan& plan);

}  // namespace cosyfast
