#include "engines/turbomind/tm_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <stdexcept>
#include <thread>

#include "core/tables.h"  // BFloat16ToFloat

namespace cosyfast::tm {
namespace {

namespace ft = turbomind;

// Session ids are unique in the process: TurboMind refuses two live requests with one id.
int64_t NextRequestId() {
  static std::atomic<int64_t> next{1};
  return next.fetch_add(1);
}

std::atomic<int64_t> g_requests_alive{0};  // Request objects in the process (RequestsAlive)

std::string StatusSentence(int status) {
  switch (status) {
    case ft::Request::kInvalid: return "TurboMind refused the request as malformed (input embeddings or ranges)";
    case ft::Request::kConflict: return "TurboMind already runs a request with this session id";
    case ft::Request::kFail: return "TurboMind failed while running the request";
    case ft::Request::kTooLong: return "the prompt is longer than TurboMind's session_len";
    case ft::Request::kInconsistency: return "TurboMind's prefix cache cannot serve this request";
    case ft::Request::kNoQueue: return "TurboMind has no queue for the request (no engine on this device)";
    case ft::Request::kOutOfMemory: return "TurboMind ran out of KV cache memory for the request";
    default: return "TurboMind ended the request with status " + std::to_string(status);
  }
}

template <class T>
ft::Tensor HostTensor(std::vector<T> values, ft::Layout layout, ft::DataType dtype) {
  auto storage = std::make_shared<std::vector<T>>(std::move(values));
  void* data = storage->data();
  return ft::Tensor{std::shared_ptr<void>(storage, data), std::move(layout), dtype, ft::kCPU};
}

// TurboMind's inputs for a spec: ids, and the rows with the positions they replace.
std::shared_ptr<ft::TensorMap> MakeInputs(RequestSpec& spec, int hidden) {
  const int n = static_cast<int>(spec.ids.size());
  auto inputs = std::make_shared<ft::TensorMap>();
  inputs->emplace("input_ids", HostTensor(std::move(spec.ids), ft::Layout{n}, ft::kInt32));
  if (!spec.row_ranges.empty()) {
    const int rows = static_cast<int>(spec.rows.size() / hidden);
    std::vector<int32_t> ranges;
    for (auto [b, e] : spec.row_ranges) ranges.insert(ranges.end(), {b, e});
    const int k = static_cast<int>(spec.row_ranges.size());
    inputs->emplace("input_embeddings", HostTensor(std::move(spec.rows), ft::Layout{rows, hidden}, ft::kBfloat16));
    inputs->emplace("input_embedding_ranges", HostTensor(std::move(ranges), ft::Layout{k, 2}, ft::kInt32));
  }
  return inputs;
}

// Throws std::invalid_argument naming what is wrong with a spec.
void CheckSpec(const RequestSpec& spec, const EngineOptions& o) {
  const int n = static_cast<int>(spec.ids.size());
  if (n < 1) throw std::invalid_argument("a TurboMind request needs at least one input position");
  if (n >= o.max_session_len) {
    throw std::invalid_argument("the input has " + std::to_string(n) + " positions, which leaves no room under " +
                                "TurboMind's session_len of " + std::to_string(o.max_session_len));
  }
  if (spec.max_new_tokens < 1 || n + spec.max_new_tokens > o.max_session_len) {
    throw std::invalid_argument("max_new_tokens " + std::to_string(spec.max_new_tokens) + " after " +
                                std::to_string(n) + " input positions must be in [1, " +
                                std::to_string(o.max_session_len - n) + "]");
  }
  size_t covered = 0;
  int last = 0;
  for (auto [b, e] : spec.row_ranges) {
    if (b < last || e <= b || e > n) {
      throw std::invalid_argument("input row ranges must be ascending, disjoint and inside the input");
    }
    covered += static_cast<size_t>(e - b);
    last = e;
  }
  if (covered * static_cast<size_t>(o.hidden_size) != spec.rows.size()) {
    throw std::invalid_argument("the input rows hold " + std::to_string(spec.rows.size()) + " values, the ranges need " +
                                std::to_string(covered * o.hidden_size));
  }
  for (size_t i = 0; i < spec.ids.size(); ++i) {
    if (spec.ids[i] < 0 || spec.ids[i] >= o.vocab_size) {
      throw std::invalid_argument("input id " + std::to_string(spec.ids[i]) + " is outside TurboMind's vocabulary [0, " +
                                  std::to_string(o.vocab_size) + ")");
    }
  }
}

}  // namespace

void EngineOptions::Validate() const {
  if (hidden_size <= 0 || vocab_size <= 0 || max_session_len <= 1) {
    throw std::invalid_argument("TurboMind engine options: hidden_size " + std::to_string(hidden_size) +
                                ", vocab_size " + std::to_string(vocab_size) + " and max_session_len " +
                                std::to_string(max_session_len) + " must all be positive (session > 1)");
  }
}

void EngineCore::Ended(int64_t id) {
  std::lock_guard<std::mutex> lock(mutex);
  live.erase(id);
}

Request::Request(std::shared_ptr<EngineCore> core, int64_t id, std::shared_ptr<RequestObserver> observer,
                 int stop_begin, int stop_end)
    : core_(std::move(core)), id_(id), observer_(std::move(observer)), stop_begin_(stop_begin), stop_end_(stop_end) {
  g_requests_alive.fetch_add(1, std::memory_order_relaxed);
}

Request::~Request() { g_requests_alive.fetch_sub(1, std::memory_order_relaxed); }

int64_t RequestsAlive() { return g_requests_alive.load(std::memory_order_relaxed); }

void Request::EndObserver(const RequestEnd& end) {
  // Let go of the observer as it hears the end: it holds this request (to cancel it), so keeping
  // both would keep each alive after the caller has dropped its handle, with TurboMind's request
  // and its inputs and outputs (a leak per request, and a core that ~Engine waits for in vain).
  std::shared_ptr<RequestObserver> observer = std::move(observer_);
  observer->OnEnd(end);
}

void Request::Cancel() {
  // ModelRequest::Cancel finds the engine's request through a weak reference: a request that
  // has ended already is left alone.
  std::lock_guard<std::mutex> lock(mutex_);
  if (!ended_ && model_request_) model_request_->Cancel();
}

void Request::Submit(RequestSpec spec) {
  const int n = static_cast<int>(spec.ids.size());
  ft::ModelRequest::InputParam param{};
  param.tensors = MakeInputs(spec, core_->options.hidden_size);
  param.session = ft::SessionParam{static_cast<uint64_t>(id_), 0};
  param.gen_cfg.max_new_tokens = spec.max_new_tokens;
  param.gen_cfg.top_k = spec.top_k;
  param.gen_cfg.top_p = spec.top_p;
  param.gen_cfg.random_seed = spec.seed;
  param.gen_cfg.cosyvoice = std::move(spec.cosyvoice);
  param.stream_output = true;
  param.enable_metrics = false;
  read_ = n;  // generated tokens follow the input in output_ids

  std::lock_guard<std::mutex> lock(mutex_);
  model_request_ = core_->model->CreateRequest();
  // The callback keeps this object alive as long as TurboMind holds the request.
  auto self = shared_from_this();
  ft::ModelRequest::OutputParam out = model_request_->Forward(std::move(param), [self] { self->OnSignal(); });
  state_ = out.state;
  outputs_ = out.tensors;
}

void Request::OnSignal() {
  std::lock_guard<std::mutex> lock(mutex_);
  Drain();
}

void Request::Drain() {
  // Taking the state re-arms TurboMind's callback for the next one.
  std::unique_ptr<ft::RequestState> state = state_->exchange(nullptr);
  if (!state || ended_) return;
  const int status = state->status;
  const bool finished = status == ft::Request::kFinish;
  if (status != ft::Request::kOk && !finished) {
    RequestEnd end;
    end.kind = status == ft::Request::kCancel ? RequestEnd::Kind::kCancelled : RequestEnd::Kind::kError;
    if (end.kind == RequestEnd::Kind::kError) end.error = StatusSentence(status);
    ended_ = true;
    core_->Ended(id_);
    EndObserver(end);
    return;
  }
  const int32_t* ids = outputs_->at("output_ids").data<int32_t>();
  int upto = state->seq_len;
  RequestEnd end;
  end.kind = RequestEnd::Kind::kLength;
  if (finished && upto > read_ && ids[upto - 1] >= stop_begin_ && ids[upto - 1] < stop_end_) {
    end.kind = RequestEnd::Kind::kStop;
    end.stop_token = ids[upto - 1];
    --upto;  // a stop id is not emitted
  }
  bool go_on = true;
  if (upto > read_) {
    go_on = observer_->OnTokens(ids + read_, upto - read_);
    read_ = upto;
  }
  if (finished) {
    ended_ = true;
    core_->Ended(id_);
    EndObserver(end);
  } else if (!go_on) {
    model_request_->Cancel();  // TurboMind answers with kCancel
  }
}

Engine::Engine(std::shared_ptr<turbomind::TurboMind> model, EngineOptions options)
    : core_(std::make_shared<EngineCore>()) {
  if (!model) throw std::invalid_argument("the TurboMind engine needs a loaded TurboMind model");
  options.Validate();
  core_->model = std::move(model);
  core_->options = options;
}

Engine::~Engine() {
  std::vector<std::shared_ptr<Request>> live;
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    for (auto& [id, weak] : core_->live) {
      if (auto r = weak.lock()) live.push_back(std::move(r));
    }
  }
  for (auto& r : live) r->Cancel();
  live.clear();
  // TurboMind answers each cancel from its own threads; give it a bounded time.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (live_requests() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // A request ends (for its observer) before TurboMind lets go of its callback, which holds the
  // Request and so the core. Were the core's last reference dropped there, TurboMind would be
  // destroyed on its own thread, joining itself (a crash at exit in C hosts, which hold no other
  // reference). So wait until every request is gone, then destroy TurboMind here; should one
  // never go, keep TurboMind alive rather than free it under a running thread.
  while (core_.use_count() > 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (core_.use_count() == 1) {
    core_->model.reset();
  } else {
    new std::shared_ptr<EngineCore>(core_);  // deliberately leaked: see above
  }
}

std::shared_ptr<Request> Engine::Start(RequestSpec spec, std::shared_ptr<RequestObserver> observer) {
  if (!observer) throw std::invalid_argument("a TurboMind request needs an observer");
  CheckSpec(spec, core_->options);
  const auto& c = spec.cosyvoice;
  const int stop_begin = c.enabled ? c.stop_begin : 0, stop_end = c.enabled ? c.stop_end : 0;
  auto request = std::make_shared<Request>(core_, NextRequestId(), std::move(observer), stop_begin, stop_end);
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    core_->live.emplace(request->id_, request);
  }
  request->Submit(std::move(spec));
  return request;
}

std::vector<float> Engine::InputLogits(RequestSpec spec) {
  const int n = static_cast<int>(spec.ids.size());
  const int vocab = core_->options.vocab_size;
  spec.max_new_tokens = 1;
  spec.cosyvoice = {};
  CheckSpec(spec, core_->options);
  ft::ModelRequest::InputParam param{};
  param.tensors = MakeInputs(spec, core_->options.hidden_size);
  param.session = ft::SessionParam{static_cast<uint64_t>(NextRequestId()), 0};
  param.gen_cfg.max_new_tokens = 1;
  param.gen_cfg.top_k = 1;
  param.gen_cfg.output_logits = ft::GenerationConfig::kAll;
  param.stream_output = false;
  struct Wait {
    std::mutex mutex;
    std::condition_variable done;
    bool signalled = false;
  };
  auto wait = std::make_shared<Wait>();
  auto request = core_->model->CreateRequest();
  ft::ModelRequest::OutputParam out = request->Forward(std::move(param), [wait] {
    std::lock_guard<std::mutex> lock(wait->mutex);
    wait->signalled = true;
    wait->done.notify_all();
  });
  int status = -1;
  for (;;) {
    std::unique_lock<std::mutex> lock(wait->mutex);
    wait->done.wait(lock, [&] { return wait->signalled; });
    wait->signalled = false;
    lock.unlock();
    if (auto state = out.state->exchange(nullptr)) {
      status = state->status;
      if (status != ft::Request::kOk) break;
    }
  }
  if (status != ft::Request::kFinish) throw std::runtime_error(StatusSentence(status));
  const ft::Tensor& logits = out.tensors->at("logits");  // [positions + 1, vocab], model dtype
  if (logits.ndim() != 2 || logits.shape(1) != vocab || logits.shape(0) < n) {
    throw std::runtime_error("TurboMind returned logits of an unexpected shape");
  }
  std::vector<float> rows(static_cast<size_t>(n) * vocab);
  if (logits.dtype() == ft::kBfloat16) {
    const auto* src = static_cast<const uint16_t*>(logits.raw_data());
    std::transform(src, src + rows.size(), rows.begin(), BFloat16ToFloat);
  } else if (logits.dtype() == ft::kFloat32) {
    const auto* src = static_cast<const float*>(logits.raw_data());
    std::copy(src, src + rows.size(), rows.begin());
  } else {
    throw std::runtime_error("TurboMind returned logits of a type other than bf16 or float32");
  }
  return rows;
}

size_t Engine::live_requests() const {
  std::lock_guard<std::mutex> lock(core_->mutex);
  return core_->live.size();
}

Engine::Metrics Engine::metrics() const {
  Metrics m;
  if (auto s = core_->model->GetScheduleMetrics(0)) {
    m.active = s->active_seqs;
    m.waiting = s->waiting_seqs;
    m.iterations = s->scheduler_tick;
  }
  return m;
}

}  // namespace cosyfast::tm
