// Host-memory embedding tables and the speech-vocabulary facts of one CosyVoice LLM.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cosyfast {

// A row-major [rows, dim] table stored as float32 or bfloat16 (half the memory for the
// 151936-row text table). Rows are read out as float32 or as bf16 bits.
class Table {
 public:
  enum class Storage { kFloat32, kBFloat16 };

  Table() = default;
  // Copies `data` (float32, rows * dim values) into the chosen storage.
  Table(const float* data, int64_t rows, int64_t dim, Storage storage);

  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }
  Storage storage() const { return storage_; }
  // Writes row `r` as float32 into out[0..dim). Throws std::invalid_argument naming the table.
  void CopyRow(int64_t r, float* out, const char* table_name) const;
  // The same row as bf16 bits (a bf16 table's own bytes; a float32 table's values rounded as
  // FloatToBFloat16).
  void CopyRow(int64_t r, uint16_t* out, const char* table_name) const;
  // CopyRow's check alone.
  void CheckRow(int64_t r, const char* table_name) const;

 private:
  int64_t rows_ = 0, dim_ = 0;
  Storage storage_ = Storage::kFloat32;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
};

// Inline, not in tables.cc: they run once per value of every prompt row a request starts with,
// and a call per value (through the PLT) kept those loops from vectorizing. TurboMind's prompt
// planning (52 rows of 896) took 164 us per request on the CPU box that way, which a serve burst
// pays once per request on its event loop (issue 19).
inline uint16_t FloatToBFloat16(float f) {  // round to nearest even, NaN kept
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
inline float BFloat16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
// The bf16 bits of `values`, each rounded as FloatToBFloat16.
std::vector<uint16_t> ToBFloat16(std::span<const float> values);

// Which token ids mean what, for CosyVoice2 or CosyVoice3 (as upstream CosyVoice's
// cosyvoice/llm/llm.py numbers them: Qwen2LM, CosyVoice3LM; docs/architecture.md).
struct SpeechVocab {
  std::string name;              // "cosyvoice2" or "cosyvoice3"
  int speech_token_size = 6561;  // ids below this are speech tokens
  int decoder_rows = 0;          // llm_decoder output rows (CV2 6564, CV3 6761)
  int eos = 6561;                // masked (with every stop id) while step < min_len
  std::vector<int> stop_ids;     // a sampled stop id ends the session and is not emitted
  int fill_token = -1;           // bistream "append more text" (CV2 6563, CV3 6564)
  int required_text_id = -1;     // CV3: the text must contain <|endofprompt|> (151646)

  void Validate() const;
  bool IsStop(int token) const;
};

// Everything prompt assembly needs: [sos, text..., task_id, prompt speech...].
struct PromptTables {
  Table text_embedding;     // Qwen embed_tokens [text_vocab, hidden] (151936 rows, or more with added tokens)
  Table speech_embedding;   // speech_embedding [decoder_rows or more, hidden]
  std::vector<float> sos;      // CV2 llm_embedding[0], CV3 speech_embedding[6561]
  std::vector<float> task_id;  // CV2 llm_embedding[1], CV3 speech_embedding[6563]

  int64_t hidden() const { return text_embedding.dim(); }
  void Validate() const;
};

// One row of an engine input, named rather than copied: rows are built when an engine needs them.
struct PromptRow {
  enum class Kind : uint8_t { kSos, kTaskId, kText, kSpeech };
  Kind kind;
  int32_t id = 0;  // kText: a text id; kSpeech: a speech token
};

// Appends the rows' floats (hidden each) to `out`: the one assembler every session type uses
// (with the bf16 overload below, one template).
// Throws std::invalid_argument naming a text id or speech token outside its table.
void AppendRows(const PromptTables& tables, const std::vector<PromptRow>& rows, std::vector<float>& out);
// The same rows as bf16 bits, each value as FloatToBFloat16 would round the float row: what
// TurboMind is sent, made in one pass without the float rows (engines/turbomind_inputs.h).
void AppendRows(const PromptTables& tables, const std::vector<PromptRow>& rows, std::vector<uint16_t>& out);

// Builds the prompt rows [sos, text_ids..., task_id, speech_embedding[prompt_speech]...] as
// float32, (2 + text + speech) x hidden. `text_ids` is prompt text followed by text. The ids are
// the caller's to check first (CheckPromptIds; decode/prompt_plan's PlanPrompt does); an id
// outside its table still throws std::invalid_argument here.
std::vector<float> AssemblePrompt(const PromptTables& tables, const std::vector<int32_t>& text_ids,
                                  const std::vector<int32_t>& prompt_speech_tokens);

// A prompt's ids, checked before its rows are built (there or on another thread): the required
// text id, the speech tokens' range and the text ids' range. Throws std::invalid_argument.
void CheckPromptIds(const PromptTables& tables, const SpeechVocab& vocab, const std::vector<int32_t>& text_ids,
                    const std::vector<int32_t>& prompt_speech_tokens);

}  // namespace cosyfast
