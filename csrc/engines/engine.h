// The transformer engine interface the round scheduler drives. An engine owns the KV caches of
// its sessions and returns raw decoder logits (no bias: the sampler adds it, as TurboMind
// ignores lm_head biases). Engines: cpu_qwen2 (reference, float32) and turbomind (GPU).
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace cosyfast {

// One unit of work in a round. Either a prefill (prompt_rows != nullptr: prompt_len rows of
// hidden floats, the assembled prompt; the session is new) or one step (feed `token` to a live
// session; the engine looks up its own embedding of it).
struct EngineInput {
  int64_t session_id = 0;
  const float* prompt_rows = nullptr;
  int prompt_len = 0;
  int token = -1;
};

class Engine {
 public:
  virtual ~Engine() = default;

  virtual std::string name() const = 0;
  virtual int hidden_size() const = 0;
  // Width of one logits row: the speech vocabulary, possibly padded (padded rows are masked by
  // the sampler).
  virtual int vocab_size() const = 0;
  // Longest sequence (prompt + generated) a session may reach.
  virtual int max_session_len() const = 0;

  // Runs every input of one round and writes one logits row per input, in order, to
  // logits[i * vocab_size() ...]. Throws std::runtime_error on engine failure (the scheduler
  // fails only the sessions of that round).
  virtual void Forward(std::span<const EngineInput> inputs, float* logits) = 0;

  // Frees a session's cache. Safe to call for an unknown id.
  virtual void EndSession(int64_t session_id) = 0;
};

}  // namespace cosyfast
