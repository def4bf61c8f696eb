// Reads a CPU bundle: a directory that holds everything the C++ core needs to run one CosyVoice2/3
// LLM on the CPU engine, written by `cosyfast.bundle.export_cpu_bundle` (see its docstring for
// the format). Two files:
//
//   config.json           {"format": "cosyfast-cpu-bundle", "format_version": 1, "kind": ...,
//                          "weights": "weights.safetensors",
//                          "model": {num_hidden_layers, hidden_size, num_attention_heads,
//                                    num_key_value_heads, head_dim, intermediate_size,
//                                    rms_norm_eps, rope_theta},
//                          "vocab": {name, speech_token_size, decoder_rows, eos, stop_ids,
//                                    fill_token, required_text_id}}
//   weights.safetensors   float32 tensors: text_embedding [text_vocab, H], speech_embedding
//                          [decoder_rows, H], sos [H], task_id [H], decoder_weight
//                          [decoder_rows, H], decoder_bias [decoder_rows] (CosyVoice2 only),
//                          norm [H], and layers.<i>.<Hugging Face Qwen2 layer tensor name>
//
// Every field and tensor is checked while loading; errors are std::runtime_error sentences that
// name the file and the field or tensor.
#pragma once

#include <string>
#include <vector>

#include "core/tables.h"
#include "engines/cpu_qwen2.h"

namespace cosyfast::io {

inline constexpr const char* kBundleFormat = "cosyfast-cpu-bundle";
inline constexpr int kBundleFormatVersion = 1;


struct CpuBundle {
  std::string kind;  // "cosyvoice2" or "cosyvoice3"
  CpuQwen2Config engine_config;
  CpuQwen2Weights engine_weights;  // embed_tokens = speech_embedding, lm_head = decoder_weight
  PromptTables tables;
  SpeechVocab vocab;
  std::vector<float> decoder_bias;  // empty when the model has none (CosyVoice3)
};

// Loads `dir`. `max_session_len` becomes the engine's session limit; `table_storage` is how the
// prompt tables are kept (float32 or bfloat16).
CpuBundle LoadCpuBundle(const std::string& dir, int max_session_len, Table::Storage table_storage);

}  // namespace cosyfast::io
