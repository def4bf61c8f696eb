// The reference engine: a Qwen2 decoder stack in float32 on the CPU, with a KV cache per session.
// It exists so that every part of the decode loop can be tested without a GPU, and as the embedded
// engine of the CPU demo. Its math follows Hugging Face transformers' Qwen2 (eager attention):
// RMSNorm in float32, rotate-half RoPE with HF's float32 inverse frequencies, grouped-query
// causal attention with scale 1/sqrt(head_dim), SwiGLU MLP, residual connections.
//
// Determinism: every output element is one dot product accumulated in a fixed order by one
// thread, whatever the batch composition and thread count. A session's logits are therefore
// bit-identical whether it is stepped alone or together with other sessions.
//
// Threading: Forward and EndSession may be called from several threads (scheduler lanes); one
// mutex serialises them, since the engine computes one round at a time anyway. The const
// getters may be called from any thread. Forward parallelises internally with OpenMP when it is
// available.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/options.h"
#include "engines/engine.h"

namespace cosyfast {

// Longest session the CPU engine accepts (an hour of speech tokens is 90,000).
inline constexpr int kMaxSessionLen = 1 << 17;

// The shape of the decoder stack. The vocabulary size is not here: it is the row count of the
// weights' embedding and lm_head tables.
struct CpuQwen2Config {
  int layers = 0;
  int hidden = 0;
  int heads = 0;     // query heads
  int kv_heads = 0;  // key/value heads; each serves heads / kv_heads query heads
  int head_dim = 0;
  int ffn = 0;       // intermediate size of the SwiGLU MLP
  double rms_eps = 1e-6;
  double rope_theta = 1e6;
  int max_session_len = kDefaultMaxSessionLen;  // longest sequence (prompt + generated) a session may reach

  // Throws std::invalid_argument naming the first bad field.
  void Validate() const;
  std::string ToString() const;
};

// One decoder layer, every matrix row-major [out_features, in_features] as in PyTorch's Linear.
struct CpuQwen2LayerWeights {
  std::vector<float> q_proj, q_bias;  // [heads*head_dim, hidden], [heads*head_dim]
  std::vector<float> k_proj, k_bias;  // [kv_heads*head_dim, hidden], [kv_heads*head_dim]
  std::vector<float> v_proj, v_bias;  // [kv_heads*head_dim, hidden], [kv_heads*head_dim]
  std::vector<float> o_proj;          // [hidden, heads*head_dim], no bias
  std::vector<float> gate_proj;       // [ffn, hidden]
  std::vector<float> up_proj;         // [ffn, hidden]
  std::vector<float> down_proj;       // [hidden, ffn]
  std::vector<float> input_layernorm;           // [hidden]
  std::vector<float> post_attention_layernorm;  // [hidden]
};

// The Qwen2 model as cosyfast describes it, once for every reader (the Python binding, the bundle
// reader, the weight checks, and the checkpoint reader through _core.qwen2_layer_shapes).
//
// The config, by the field names of cosyfast's normalised config (cosyfast/checkpoint.py turns a
// Hugging Face config.json into it; export-bundle writes it): integers num_hidden_layers,
// hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size; numbers
// rms_norm_eps, rope_theta. `get(name, integer)` returns a field or throws naming it in the
// caller's terms. The result is validated.
CpuQwen2Config Qwen2ConfigFrom(const std::function<double(const char* name, bool integer)>& get, int max_session_len);

// A decoder layer's tensors, by their Hugging Face names without the "model.layers.N." prefix,
// in checkpoint order: where each goes and its shape in terms of the config.
enum class Qwen2Dim { kNone, kHidden, kQWidth, kKvWidth, kFfn };
struct Qwen2LayerTensor {
  const char* name;
  std::vector<float> CpuQwen2LayerWeights::*member;
  Qwen2Dim rows;
  Qwen2Dim cols;  // kNone: a vector
};
std::span<const Qwen2LayerTensor> Qwen2LayerTensors();
int64_t Qwen2DimSize(Qwen2Dim dim, const CpuQwen2Config& config);
// The tensor's shape: {rows} or {rows, cols}.
std::vector<int64_t> Qwen2Shape(const Qwen2LayerTensor& tensor, const CpuQwen2Config& config);

struct CpuQwen2Weights {
  int vocab_size = 0;
  // The table the engine looks generated tokens up in (CosyVoice: the speech embedding).
  std::vector<float> embed_tokens;  // [vocab_size, hidden]
  // The output projection (CosyVoice: llm_decoder's weight). No bias: the sampler adds it.
  std::vector<float> lm_head;       // [vocab_size, hidden]
  std::vector<CpuQwen2LayerWeights> layers;
  std::vector<float> norm;          // [hidden], the final RMSNorm

  // Throws std::invalid_argument naming the first tensor whose size does not fit `config`.
  void Validate(const CpuQwen2Config& config) const;
};

class CpuQwen2Engine : public Engine {
 public:
  // Validates both arguments; the weights are moved into the engine.
  CpuQwen2Engine(const CpuQwen2Config& config, CpuQwen2Weights weights);
  ~CpuQwen2Engine() override;

  CpuQwen2Engine(const CpuQwen2Engine&) = delete;
  CpuQwen2Engine& operator=(const CpuQwen2Engine&) = delete;

  std::string name() const override { return "cpu_qwen2"; }
  int hidden_size() const override { return config_.hidden; }
  int vocab_size() const override { return weights_.vocab_size; }
  int max_session_len() const override { return config_.max_session_len; }
  const CpuQwen2Config& config() const { return config_; }

  // Runs all inputs of a round in one pass over the weights and writes inputs.size() rows of
  // vocab_size() floats. Every input is checked before any state changes, so a rejected round
  // leaves the engine as it was:
  //   std::runtime_error (a session's state): a step or an append for a session that is not
  //     live, a prefill of a live session, a sequence that would exceed max_session_len;
  //   std::invalid_argument (a malformed input): a session twice in one round, a token outside
  //     [0, vocab_size), a prefill or append with prompt_len < 1, a null logits buffer.
  // A failure while computing (std::bad_alloc) rolls the round back too. An append computes
  // its rows exactly as the same rows would be computed at the end of a longer prefill.
  void Forward(std::span<const EngineInput> inputs, float* logits) override;

  void EndSession(int64_t session_id) override;
  // Read from any thread (a counter, not the session table).
  size_t live_sessions() const override { return live_count_.load(); }
  bool supports_append() const override { return true; }
  bool concurrent_forward() const override { return true; }

 private:
  class SessionCache;
  struct RoundPlan;
  struct Workspace;

  // Checks every input against the session table; changes nothing.
  RoundPlan PlanRound(std::span<const EngineInput> inputs) const;
  // Computes the round: appends keys/values to the caches (without committing their lengths)
  // and writes the logits.
  void RunRound(const RoundPlan& plan, std::span<const EngineInput> inputs, float* logits);
  void RunLayer(int layer, const RoundPlan& plan, Workspace& ws);
  void Attend(int layer, const RoundPlan& plan, Workspace& ws) const;

  CpuQwen2Config config_;
  CpuQwen2Weights weights_;
  // cos and sin of every (position, frequency) pair: [max_session_len, head_dim / 2] each.
  std::vector<float> rope_cos_, rope_sin_;
  std::mutex mutex_;  // held by Forward and EndSession
  std::unordered_map<int64_t, std::unique_ptr<SessionCache>> sessions_;
  // sessions_.size(), kept apart so that other threads can read it while a round runs.
  std::atomic<size_t> live_count_{0};
};

}  // namespace cosyfast
