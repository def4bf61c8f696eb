#include "core/tables.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace cosyfast {

std::vector<uint16_t> ToBFloat16(std::span<const float> values) {
  std::vector<uint16_t> out(values.size());
  std::transform(values.begin(), values.end(), out.begin(), FloatToBFloat16);
  return out;
}

Table::Table(const float* data, int64_t rows, int64_t dim, Storage storage)
    : rows_(rows), dim_(dim), storage_(storage) {
  if (rows < 0 || dim <= 0) throw std::invalid_argument("a table needs rows >= 0 and dim > 0");
  const int64_t n = rows * dim;
  if (storage == Storage::kFloat32) {
    f32_.assign(data, data + n);
  } else {
    bf16_ = ToBFloat16({data, static_cast<size_t>(n)});
  }
}

void Table::CheckRow(int64_t r, const char* table_name) const {
  if (r < 0 || r >= rows_) {
    throw std::invalid_argument(std::string(table_name) + ": id " + std::to_string(r) + " is outside [0, " +
                                std::to_string(rows_) + ")");
  }
}

void Table::CopyRow(int64_t r, float* out, const char* table_name) const {
  CheckRow(r, table_name);
  if (storage_ == Storage::kFloat32) {
    std::memcpy(out, f32_.data() + r * dim_, dim_ * sizeof(float));
  } else {
    const uint16_t* row = bf16_.data() + r * dim_;
    for (int64_t i = 0; i < dim_; ++i) out[i] = BFloat16ToFloat(row[i]);
  }
}

void Table::CopyRow(int64_t r, uint16_t* out, const char* table_name) const {
  CheckRow(r, table_name);
  if (storage_ == Storage::kFloat32) {
    const float* row = f32_.data() + r * dim_;
    std::transform(row, row + dim_, out, FloatToBFloat16);
  } else {
    std::memcpy(out, bf16_.data() + r * dim_, dim_ * sizeof(uint16_t));
  }
}

void SpeechVocab::Validate() const {
  if (speech_token_size <= 0) throw std::invalid_argument("speech_token_size must be > 0");
  if (decoder_rows <= speech_token_size) {
    throw std::invalid_argument("decoder_rows (" + std::to_string(decoder_rows) +
                                ") must exceed speech_token_size (" + std::to_string(speech_token_size) + ")");
  }
  if (stop_ids.empty()) throw std::invalid_argument("a speech vocabulary needs at least one stop id");
  // Stop ids and the fill token are decoder rows past the speech tokens: one among the speech
  // tokens would end (or extend) a session on an ordinary token.
  const std::string special = "[" + std::to_string(speech_token_size) + ", " + std::to_string(decoder_rows) + ")";
  for (int id : stop_ids) {
    if (id < speech_token_size || id >= decoder_rows) {
      throw std::invalid_argument("stop id " + std::to_string(id) + " is outside the special decoder rows " + special);
    }
  }
  if (!IsStop(eos)) throw std::invalid_argument("eos " + std::to_string(eos) + " must be one of the stop ids");
  if (fill_token != -1 && (fill_token < speech_token_size || fill_token >= decoder_rows)) {
    throw std::invalid_argument("fill_token " + std::to_string(fill_token) + " must be -1 (none) or in " + special);
  }
  if (required_text_id < -1) {
    throw std::invalid_argument("required_text_id " + std::to_string(required_text_id) + " must be -1 (none) or a text id");
  }
}

bool SpeechVocab::IsStop(int token) const {
  return std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
}

void PromptTables::Validate() const {
  const int64_t h = hidden();
  if (h <= 0 || text_embedding.rows() < 1) throw std::invalid_argument("the text embedding table is empty");
  if (speech_embedding.dim() != h) {
    throw std::invalid_argument("speech embedding width " + std::to_string(speech_embedding.dim()) +
                                " differs from the text embedding width " + std::to_string(h));
  }
  if (static_cast<int64_t>(sos.size()) != h || static_cast<int64_t>(task_id.size()) != h) {
    throw std::invalid_argument("the sos and task_id rows must have " + std::to_string(h) + " values");
  }
}

void CheckPromptIds(const PromptTables& tables, const SpeechVocab& vocab, const std::vector<int32_t>& text_ids,
                    const std::vector<int32_t>& prompt_speech_tokens) {
  if (vocab.required_text_id >= 0 &&
      std::find(text_ids.begin(), text_ids.end(), vocab.required_text_id) == text_ids.end()) {
    throw std::invalid_argument(vocab.name + " needs the text to contain id " + std::to_string(vocab.required_text_id) +
                                " (<|endofprompt|>), as CosyVoice3 does");
  }
  for (int32_t t : prompt_speech_tokens) {
    if (t < 0 || t >= vocab.speech_token_size) {
      throw std::invalid_argument("prompt speech token " + std::to_string(t) + " is outside [0, " +
                                  std::to_string(vocab.speech_token_size) + ")");
    }
  }
  for (int32_t t : text_ids) tables.text_embedding.CheckRow(t, "text id");
}

std::vector<float> AssemblePrompt(const PromptTables& tables, const std::vector<int32_t>& text_ids,
                                  const std::vector<int32_t>& prompt_speech_tokens) {
  std::vector<PromptRow> rows;
  rows.reserve(2 + text_ids.size() + prompt_speech_tokens.size());
  rows.push_back({PromptRow::Kind::kSos});
  for (int32_t t : text_ids) rows.push_back({PromptRow::Kind::kText, t});
  rows.push_back({PromptRow::Kind::kTaskId});
  for (int32_t t : prompt_speech_tokens) rows.push_back({PromptRow::Kind::kSpeech, t});
  std::vector<float> out;
  AppendRows(tables, rows, out);
  return out;
}

namespace {

void CopyVector(const std::vector<float>& row, float* out) { std::copy(row.begin(), row.end(), out); }
void CopyVector(const std::vector<float>& row, uint16_t* out) {
  std::transform(row.begin(), row.end(), out, FloatToBFloat16);
}

template <typename T>
void AppendRowsAs(const PromptTables& tables, const std::vector<PromptRow>& rows, std::vector<T>& out) {
  const int64_t h = tables.hidden();
  const size_t start = out.size();
  out.resize(start + rows.size() * static_cast<size_t>(h));
  T* p = out.data() + start;
  for (const PromptRow& row : rows) {
    switch (row.kind) {
      case PromptRow::Kind::kSos: CopyVector(tables.sos, p); break;
      case PromptRow::Kind::kTaskId: CopyVector(tables.task_id, p); break;
      case PromptRow::Kind::kText: tables.text_embedding.CopyRow(row.id, p, "text id"); break;
      case PromptRow::Kind::kSpeech: tables.speech_embedding.CopyRow(row.id, p, "speech token"); break;
    }
    p += h;
  }
}

}  // namespace

void AppendRows(const PromptTables& tables, const std::vector<PromptRow>& rows, std::vector<float>& out) {
  AppendRowsAs(tables, rows, out);
}

void AppendRows(const PromptTables& tables, const std::vector<PromptRow>& rows, std::vector<uint16_t>& out) {
  AppendRowsAs(tables, rows, out);
}

}  // namespace cosyfast
