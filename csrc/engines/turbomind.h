// The GPU engine: LMDeploy 0.14 TurboMind interactive sessions, driven from C++ through the
// objects of TurboMind's own Python binding (no TurboMind headers ship, so this is the only way
// in). Everything that touches that binding lives in this file and turbomind.cc.
//
// One round = one request per session: a prefill carries the prompt rows as input_embeddings;
// a step carries the session's last token as input_ids with step = tokens in its KV cache. All
// requests of a round are submitted before any is waited on. The GIL is held only around
// binding calls; waiting for the engine's signals happens without it. Logits come back as host
// tensors read through DLPack without a Python-level copy. Several scheduler lanes may run
// rounds at once (each borrows its own signal counters); the GIL guards the session table.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engines/engine.h"

namespace cosyfast {

// A host buffer handed to TurboMind through DLPack (`__dlpack__`). TurboMind keeps the tensor
// until its request is done and then calls the deleter, which drops this buffer's last
// reference: the rows stay alive exactly as long as the engine needs them.
class HostTensor {
 public:
  HostTensor(std::shared_ptr<void> storage, void* data, std::vector<int64_t> shape, uint8_t type_code, uint8_t bits);
  // A fresh "dltensor" capsule; if nobody takes it over, its destructor frees what it holds.
  pybind11::capsule ToDlpack() const;
  std::pair<int, int> Device() const { return {1, 0}; }  // host memory

 private:
  std::shared_ptr<void> storage_;
  void* data_;
  std::vector<int64_t> shape_;
  uint8_t code_, bits_;
};

struct TurboMindOptions {
  int hidden_size = 0;
  int vocab_size = 0;       // the exported (padded) vocabulary: the width of a logits row
  int max_session_len = 0;  // the engine's session_len
  void Validate() const;
};

class TurboMindEngine : public Engine {
 public:
  // `tm_module`: lmdeploy.lib._turbomind; `model_comm`: TurboMind.model_comm (its create_request
  // makes one ModelRequest per session); `gen_config`: a _turbomind.GenerationConfig asking for
  // one new token with generation logits; `owner`: kept alive as long as this engine (the
  // Python TurboMind object). Call with the GIL held.
  TurboMindEngine(pybind11::object tm_module, pybind11::object model_comm, pybind11::object gen_config,
                  pybind11::object owner, TurboMindOptions options);
  ~TurboMindEngine() override;

  std::string name() const override { return "turbomind"; }
  int hidden_size() const override { return options_.hidden_size; }
  int vocab_size() const override { return options_.vocab_size; }
  int max_session_len() const override { return options_.max_session_len; }

  void Forward(std::span<const EngineInput> inputs, float* logits) override;
  void EndSession(int64_t session_id) override;

  size_t live_sessions() const override { return sessions_.size(); }
  bool supports_append() const override { return true; }
  bool concurrent_forward() const override { return true; }

  // Where rounds spend their time, summed since construction (seconds): building and
  // submitting requests (GIL held), waiting for the engine's signals (GIL free), consuming
  // states and reading logits (GIL held). For benchmarks/NOTES.md.
  struct Profile {
    int64_t rounds = 0, requests = 0;
    double submit_s = 0, wait_s = 0, read_s = 0;
  };
  Profile profile() const { return profile_; }

  // Engine signals (one counter per request slot of a round), bumped from the engine's
  // signalling thread.
  class Signals;

 private:
  struct Live {
    pybind11::object request;  // the session's ModelRequest, reused for every request
    pybind11::object forward;  // its bound forward method
    pybind11::object session;  // its SessionParam, updated in place (step, start) per request
    int cached = 0;            // tokens in its KV cache
    pybind11::object step_tensors;                // the input map of every step ...
    std::shared_ptr<std::vector<int32_t>> step_ids;  // ... and the one token it carries
  };
  struct Slot;
  // What one Forward call borrows for its round: signal counters and one engine callback per
  // slot, made once and reused.
  struct Lane;
  struct Ending {
    pybind11::object request;
    std::shared_ptr<std::atomic<bool>> done;  // set by the engine's end callback
  };

  Lane& BorrowLane(size_t slots);  // GIL held
  Live& Find(int64_t id);          // a live session, or std::invalid_argument
  void Submit(const EngineInput& input, Slot& slot, const pybind11::object& callback);
  // Waits (GIL released) until every slot is done; returns the seconds spent waiting.
  double WaitAll(Lane& lane, std::vector<Slot>& slots);
  // One answered request's logits row, found with the GIL held and kept alive by its DLPack
  // capsule, then widened to float without the GIL.
  struct LogitsRow {
    pybind11::object keep;
    const char* data = nullptr;
    bool bf16 = false;
  };
  LogitsRow FindLogits(Slot& slot) const;
  void CopyRow(const LogitsRow& row, float* out) const;

  pybind11::object tm_;
  pybind11::object from_dlpack_;  // tm_.from_dlpack, looked up once
  pybind11::object model_comm_;
  pybind11::object gen_config_;
  pybind11::object owner_;
  TurboMindOptions options_;
  // Everything below is guarded by the GIL.
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::vector<Lane*> idle_lanes_;
  std::unordered_map<int64_t, Live> sessions_;
  std::vector<Ending> ending_;
  Profile profile_;
};

}  // namespace cosyfast
