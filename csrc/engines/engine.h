// The transformer engine interface the round scheduler drives. An engine owns the KV caches of
// its sessions and returns raw decoder logits (no bias: the sampler adds it, as TurboMind
// ignores lm_head biases). Engines: cpu_qwen2 (reference, float32) and turbomind (GPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace cosyfast {

// One unit of work in a round, one of three kinds:
//   prefill: prompt_rows != nullptr, append false: prompt_len rows of hidden floats (the
//            assembled prompt) start a new session;
//   append:  prompt_rows != nullptr, append true: prompt_len rows continue a live session after
//            its cached positions (bistream: text that arrives while the session decodes). Only
//            sent to engines whose supports_append() is true;
//   step:    prompt_rows == nullptr: feed `token` to a live session (the engine looks up its
//            own embedding of it).
// Either way the engine returns the logits of the input's last position.
struct EngineInput {
  int64_t session_id = 0;
  const float* prompt_rows = nullptr;
  int prompt_len = 0;
  int token = -1;
  bool append = false;
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

  // Sessions whose cache the engine holds: what a leak check reads once every request has
  // ended. Exact only while no round runs.
  virtual size_t live_sessions() const = 0;

  // Whether Forward may be called from several threads at once (each call with its own
  // sessions). A generator runs several scheduler lanes over such an engine: while one lane
  // samples its sessions and plans the next round, another lane's round runs on the engine.
  virtual bool concurrent_forward() const { return false; }

  // Whether Forward takes `append` inputs. Bistream sessions need it, so a generator refuses
  // them on an engine without it rather than failing mid-request.
  virtual bool supports_append() const { return false; }
};

}  // namespace cosyfast
