// The GPU engine: TurboMind built from lmdeploy's source with cosyfast's patch, driven through
// its C++ API. Unlike the round engines (engines/engine.h), TurboMind runs each utterance's whole
// decode loop itself: one request per utterance carries the prompt rows as input embeddings,
// and TurboMind's generation loop adds the decoder bias, masks, samples with RAS from the
// request's seeded generator and stops (third_party/turbomind/cosyvoice_sampling_kernel.h).
// Tokens come back on TurboMind's signal thread and go straight to the request's observer: no
// Python object and no GIL on the token path.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/turbomind/engine/model_request.h"
#include "src/turbomind/engine/request.h"
#include "src/turbomind/turbomind.h"

namespace cosyfast::tm {

// What one TurboMind request asks for. Positions [0, ids.size()) are the input; the ranges name
// the positions whose rows come from `rows` (bf16, in order) instead of TurboMind's own embedding
// table (the speech embedding), e.g. [sos, text..., task_id] rows and prompt speech ids.
struct RequestSpec {
  std::vector<int32_t> ids;
  std::vector<uint16_t> rows;                    // bf16, [sum of range sizes, hidden]
  std::vector<std::pair<int, int>> row_ranges;   // [begin, end), ascending, disjoint
  int max_new_tokens = 0;
  uint64_t seed = 0;
  int top_k = 25;
  float top_p = 0.8f;
  turbomind::CosyVoiceConfig cosyvoice;  // enabled = false: TurboMind's own top-k/top-p sampler
};

// How a request ended.
struct RequestEnd {
  enum class Kind { kStop, kLength, kCancelled, kError };
  Kind kind = Kind::kError;
  int32_t stop_token = -1;  // kStop: the stop id drawn (not passed to OnTokens)
  std::string error;        // kError: a sentence
};

// Hears one request's tokens, on TurboMind's signal thread, in order: must be quick and must not
// block on the engine.
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // Returns false to cancel the request (the tokens given so far stand).
  virtual bool OnTokens(const int32_t* tokens, int count) = 0;
  // Exactly once, last.
  virtual void OnEnd(const RequestEnd& end) = 0;
};

struct EngineOptions {
  int hidden_size = 0;
  int vocab_size = 0;       // TurboMind's vocabulary (the exported, padded one)
  int max_session_len = 0;  // its session_len
  void Validate() const;
};

class Request;

// What an engine and its requests share: the model and the table of live requests. Requests
// hold it, so a late signal never reaches a freed engine.
struct EngineCore {
  std::shared_ptr<turbomind::TurboMind> model;
  EngineOptions options;
  std::mutex mutex;
  std::unordered_map<int64_t, std::weak_ptr<Request>> live;
  void Ended(int64_t id);
};

// One request in flight. Kept alive by TurboMind's callback until TurboMind has let the request
// go, so it outlives every signal. The observer must not call Cancel from its callbacks (it
// returns false from OnTokens instead).
class Request : public std::enable_shared_from_this<Request> {
 public:
  Request(std::shared_ptr<EngineCore> core, int64_t id, std::shared_ptr<RequestObserver> observer, int stop_begin,
          int stop_end);
  ~Request();
  void Cancel();  // any thread; idempotent
  int64_t id() const { return id_; }

 private:
  friend class Engine;
  void Submit(RequestSpec spec);  // once, by Engine::Start
  void OnSignal();                // TurboMind's signal thread
  void Drain();                   // mutex_ held
  void EndObserver(const RequestEnd& end);  // mutex_ held: tells the observer and lets go of it

  std::shared_ptr<EngineCore> core_;
  const int64_t id_;
  std::shared_ptr<RequestObserver> observer_;
  const int stop_begin_, stop_end_;
  std::unique_ptr<turbomind::ModelRequest> model_request_;
  // Guards everything below. Held across Forward, so a signal that comes before Forward has
  // returned waits for the state it needs.
  std::mutex mutex_;
  std::shared_ptr<turbomind::AtomicRequestState> state_;
  std::shared_ptr<turbomind::TensorMap> outputs_;
  bool ended_ = false;
  int read_ = 0;  // output positions already passed on
};

// Request objects alive in this process: a test that finished requests are freed once their
// callers let go (an observer that kept its request would keep both).
int64_t RequestsAlive();

class Engine {
 public:
  // `model`: a TurboMind whose weights are loaded and whose engine is created (index 0).
  Engine(std::shared_ptr<turbomind::TurboMind> model, EngineOptions options);
  // Cancels what is still live, waits (bounded) for TurboMind to end it and to let go of every
  // request, then releases the model on this thread (never on one of TurboMind's own).
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineOptions& options() const { return core_->options; }

  // Starts a request; tokens go to `observer`. The spec is checked here (std::invalid_argument).
  std::shared_ptr<Request> Start(RequestSpec spec, std::shared_ptr<RequestObserver> observer);

  // Parity and test hook: TurboMind's raw decoder logits (no bias) at every input position of
  // `spec`, from one prefill: positions x vocab_size floats. Blocks until TurboMind answers;
  // throws std::runtime_error with its status as a sentence.
  std::vector<float> InputLogits(RequestSpec spec);

  // Requests started and not yet ended.
  size_t live_requests() const;
  // TurboMind's own view: sequences it holds (active + waiting) and its scheduler ticks.
  struct Metrics {
    int active = 0, waiting = 0;
    int64_t iterations = 0;
  };
  Metrics metrics() const;

 private:
  std::shared_ptr<EngineCore> core_;
};

}  // namespace cosyfast::tm
