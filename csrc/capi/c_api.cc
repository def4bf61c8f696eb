// The C API (include/cosyfast/c_api.h) over the core's generators (the CPU engine's round
// scheduler, or TurboMind's when built with it) and TokenQueue.
// Every exported function catches everything it can throw and turns it into the calling thread's
// last error, so no exception crosses the C boundary.
#include "cosyfast/c_api.h"

#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/options.h"
#include "core/process.h"
#include "decode/generator.h"
#include "decode/token_queue.h"
#include "engines/cpu_qwen2.h"
#include "decode/pool.h"
#include "io/bundle.h"
#ifdef COSYFAST_WITH_TURBOMIND
#include "engines/turbomind/tm_bundle.h"
#endif

#ifndef COSYFAST_VERSION
#define COSYFAST_VERSION "unknown"
#endif

// What every replica of a model shares.
struct ModelShape {
  int hidden_size, vocab_size, max_session_len;
};

// A model's replicas behind one interface, whichever engine runs them: a pool of CPU round
// schedulers or of TurboMind generators (decode/pool.h picks the replica).
class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  // `keep_alive` receives what must outlive the request (its replica and engine).
  virtual std::shared_ptr<cosyfast::RequestHandle> Start(const cosyfast::GenerationRequest& request,
                                                         std::shared_ptr<cosyfast::TokenSink> sink,
                                                         std::shared_ptr<void>& keep_alive) = 0;
  virtual size_t live_sessions() const = 0;
  virtual ModelShape shape() const = 0;
};

namespace {

ModelShape ShapeOf(const cosyfast::Generator& g) {
  const cosyfast::Engine& e = g.engine();
  return {e.hidden_size(), e.vocab_size(), e.max_session_len()};
}
#ifdef COSYFAST_WITH_TURBOMIND
ModelShape ShapeOf(const cosyfast::tm::Generator& g) {
  const cosyfast::tm::EngineOptions& o = g.engine().options();
  return {o.hidden_size, o.vocab_size, o.max_session_len};
}
#endif

// Replicas of one generator type (cosyfast::Generator or tm::Generator) behind the interface.
template <class Replica>
class PoolBackend final : public ModelBackend {
 public:
  explicit PoolBackend(std::vector<std::shared_ptr<Replica>> replicas) : pool_(std::move(replicas)) {}
  std::shared_ptr<cosyfast::RequestHandle> Start(const cosyfast::GenerationRequest& request,
                                                 std::shared_ptr<cosyfast::TokenSink> sink,
                                                 std::shared_ptr<void>& keep_alive) override {
    const auto& replica = pool_.Pick();
    keep_alive = replica;
    return replica->Start(request, std::move(sink));
  }
  size_t live_sessions() const override { return pool_.live_sessions(); }
  ModelShape shape() const override { return ShapeOf(*pool_.replicas().front()); }

 private:
  cosyfast::Pool<Replica> pool_;
};

}  // namespace

struct CosyfastModel {
  std::unique_ptr<ModelBackend> backend;
  std::string kind;
};

struct CosyfastRequest {
  std::shared_ptr<void> keep_alive;  // the replica (and so the engine) the request runs on
  std::shared_ptr<cosyfast::RequestHandle> session;
  std::shared_ptr<cosyfast::TokenQueue> queue;
  const uint64_t fork_count = cosyfast::ForkCount();
  // A request dropped while running is cancelled; the engine frees it at its next step (in a
  // forked child there is no engine thread, and its locks may have been held at the fork).
  ~CosyfastRequest() {
    if (session && fork_count == cosyfast::ForkCount()) session->RequestCancel();
  }
};

namespace {

using cosyfast::FinishReason;

thread_local std::string last_error;

void SetError(std::string message) { last_error = std::move(message); }
void ClearError() { last_error.clear(); }

// Runs `body` and returns its value; on an exception records the message and returns `failed`.
template <typename T, typename F>
T Guard(T failed, F&& body) noexcept {
  try {
    ClearError();
    return body();
  } catch (const std::bad_alloc&) {
    SetError("out of memory");
  } catch (const std::exception& e) {
    SetError(e.what());
  } catch (...) {
    SetError("unknown error");
  }
  return failed;
}

struct Result : CosyfastResult {
  std::vector<int32_t> token_storage;
  std::string reason_storage;
};

void RequireArg(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

std::vector<int32_t> Ids(const int32_t* ids, int32_t count, const char* name) {
  if (count < 0) throw std::invalid_argument(std::string(name) + ": the count is negative");
  if (count > 0 && !ids) throw std::invalid_argument(std::string(name) + " is NULL but its count is " + std::to_string(count));
  return std::vector<int32_t>(ids, ids + count);
}

cosyfast::RequestOptions ToCore(const CosyfastRequestOptions& o) {
  cosyfast::RequestOptions r;
  r.seed = o.seed;
  r.sampling.top_p = o.top_p;
  r.sampling.top_k = o.top_k;
  r.sampling.ras = o.ras != 0;
  r.sampling.win_size = o.win_size;
  r.sampling.tau_r = o.tau_r;
  r.sampling.exclude_repeated = o.exclude_repeated != 0;
  r.length.min_token_text_ratio = o.min_token_text_ratio;
  r.length.max_token_text_ratio = o.max_token_text_ratio;
  r.length.max_len_override = o.max_len;
  r.length.min_len_override = o.min_len;
  return r;  // Generator::Start validates
}

CosyfastRequest* StartRequest(CosyfastModel* model, const CosyfastInput* input, const CosyfastRequestOptions* options) {
  RequireArg(model != nullptr, "the model is NULL");
  RequireArg(input != nullptr, "the input is NULL");
  RequireArg(options != nullptr, "the options are NULL");
  cosyfast::GenerationRequest request;
  request.text_ids = Ids(input->text_ids, input->num_text_ids, "text_ids");
  request.prompt_text_ids = Ids(input->prompt_text_ids, input->num_prompt_text_ids, "prompt_text_ids");
  request.prompt_speech_tokens =
      Ids(input->prompt_speech_tokens, input->num_prompt_speech_tokens, "prompt_speech_tokens");
  request.options = ToCore(*options);
  auto handle = std::make_unique<CosyfastRequest>();
  handle->queue = std::make_shared<cosyfast::TokenQueue>();
  handle->session = model->backend->Start(request, handle->queue, handle->keep_alive);
  return handle.release();
}

}  // namespace

extern "C" {

const char* cosyfast_version(void) { return COSYFAST_VERSION; }

const char* cosyfast_last_error(void) { return last_error.c_str(); }

CosyfastModelConfig cosyfast_model_config_default(void) {
  CosyfastModelConfig c;
  c.bundle_dir = nullptr;
  c.max_batch = cosyfast::SchedulerOptions{}.max_batch;
  c.max_session_len = cosyfast::kDefaultMaxSessionLen;
  c.table_bfloat16 = 0;
  c.replicas = 1;
  c.engine = "cpu";
  c.device = 0;
  c.gpu_memory = 0;
  return c;
}

CosyfastRequestOptions cosyfast_request_options_default(void) {
  const cosyfast::RequestOptions d;
  CosyfastRequestOptions o;
  o.seed = d.seed;
  o.top_p = d.sampling.top_p;
  o.top_k = d.sampling.top_k;
  o.ras = d.sampling.ras ? 1 : 0;
  o.win_size = d.sampling.win_size;
  o.tau_r = d.sampling.tau_r;
  o.exclude_repeated = d.sampling.exclude_repeated ? 1 : 0;
  o.min_token_text_ratio = d.length.min_token_text_ratio;
  o.max_token_text_ratio = d.length.max_token_text_ratio;
  o.max_len = d.length.max_len_override;
  o.min_len = d.length.min_len_override;
  return o;
}

CosyfastModel* cosyfast_model_create(const CosyfastModelConfig* config) {
  return Guard<CosyfastModel*>(nullptr, [&] {
    RequireArg(config != nullptr, "the model config is NULL");
    RequireArg(config->bundle_dir != nullptr && config->bundle_dir[0] != '\0',
               "the model config has no bundle_dir: pass the directory of an exported bundle");
    RequireArg(config->max_session_len >= 1,
               ("max_session_len must be >= 1, got " + std::to_string(config->max_session_len)).c_str());
    cosyfast::SchedulerOptions sched;
    sched.max_batch = config->max_batch;
    sched.Validate();
    const auto storage = config->table_bfloat16 ? cosyfast::Table::Storage::kBFloat16
                                                : cosyfast::Table::Storage::kFloat32;
    RequireArg(config->replicas >= 1 && config->replicas <= 64,
               ("replicas must be in [1, 64], got " + std::to_string(config->replicas)).c_str());
    const std::string engine = config->engine ? config->engine : "cpu";
    RequireArg(engine == "cpu" || engine == "turbomind",
               ("engine must be \"cpu\" or \"turbomind\", got \"" + engine + "\"").c_str());
    auto model = std::make_unique<CosyfastModel>();
    if (engine == "turbomind") {
#ifdef COSYFAST_WITH_TURBOMIND
      cosyfast::tm::BundleLoadOptions o;
      o.dir = config->bundle_dir;
      o.first_device = config->device;
      o.replicas = config->replicas;
      o.max_batch = config->max_batch;
      o.max_session_len = config->max_session_len;
      o.gpu_memory = config->gpu_memory;
      o.table_storage = storage;
      cosyfast::tm::TurboMindBundle bundle = cosyfast::tm::LoadTurboMindBundle(o);
      model->kind = bundle.kind;
      model->backend = std::make_unique<PoolBackend<cosyfast::tm::Generator>>(std::move(bundle.replicas));
      return model.release();
#else
      throw std::invalid_argument(
          "this cosyfast was built without the turbomind engine: build it with -DCOSYFAST_TURBOMIND=ON "
          "(README, 'The TurboMind engine'), or use engine \"cpu\"");
#endif
    }
    RequireArg(config->device == 0 && config->gpu_memory == 0,
               "device and gpu_memory apply to the turbomind engine only");
    std::vector<std::shared_ptr<cosyfast::Generator>> replicas;
    for (int32_t i = 0; i < config->replicas; ++i) {
      cosyfast::io::CpuBundle bundle =
          cosyfast::io::LoadCpuBundle(config->bundle_dir, config->max_session_len, storage);
      auto cpu = std::make_shared<cosyfast::CpuQwen2Engine>(bundle.engine_config, std::move(bundle.engine_weights));
      auto tables = std::make_shared<const cosyfast::PromptTables>(std::move(bundle.tables));
      model->kind = bundle.kind;
      replicas.push_back(std::make_shared<cosyfast::Generator>(std::move(tables), std::move(bundle.vocab),
                                                               std::move(bundle.decoder_bias), std::move(cpu), sched));
    }
    model->backend = std::make_unique<PoolBackend<cosyfast::Generator>>(std::move(replicas));
    return model.release();
  });
}

void cosyfast_model_destroy(CosyfastModel* model) {
  Guard<int>(0, [&] {
    delete model;  // the generator lives on while requests hold it
    return 0;
  });
}

const char* cosyfast_model_kind(const CosyfastModel* model) {
  return Guard<const char*>("", [&] {
    RequireArg(model != nullptr, "the model is NULL");
    return model->kind.c_str();
  });
}

int32_t cosyfast_model_hidden_size(const CosyfastModel* model) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(model != nullptr, "the model is NULL");
    return model->backend->shape().hidden_size;
  });
}

int32_t cosyfast_model_vocab_size(const CosyfastModel* model) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(model != nullptr, "the model is NULL");
    return model->backend->shape().vocab_size;
  });
}

int32_t cosyfast_model_max_session_len(const CosyfastModel* model) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(model != nullptr, "the model is NULL");
    return model->backend->shape().max_session_len;
  });
}

int32_t cosyfast_model_live_sessions(const CosyfastModel* model) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(model != nullptr, "the model is NULL");
    return static_cast<int32_t>(model->backend->live_sessions());
  });
}

CosyfastRequest* cosyfast_request_start(CosyfastModel* model, const CosyfastInput* input,
                                        const CosyfastRequestOptions* options) {
  return Guard<CosyfastRequest*>(nullptr, [&] { return StartRequest(model, input, options); });
}

int32_t cosyfast_request_next(CosyfastRequest* request, double timeout_s, int32_t* token) {
  return Guard<int32_t>(COSYFAST_NEXT_ERROR, [&]() -> int32_t {
    RequireArg(request != nullptr, "the request is NULL");
    RequireArg(token != nullptr, "the token pointer is NULL");
    std::optional<int32_t> t;
    try {
      t = request->queue->Next(timeout_s);
    } catch (const std::runtime_error& e) {  // TokenQueue's timeout
      SetError(e.what());
      return COSYFAST_NEXT_TIMEOUT;
    }
    if (t) {
      *token = *t;
      return COSYFAST_NEXT_TOKEN;
    }
    if (request->queue->reason() == FinishReason::kError) {
      SetError("generation failed: " + request->queue->error());
      return COSYFAST_NEXT_ERROR;
    }
    return COSYFAST_NEXT_END;
  });
}

void cosyfast_request_cancel(CosyfastRequest* request) {
  Guard<int>(0, [&] {
    RequireArg(request != nullptr, "the request is NULL");
    request->session->RequestCancel();
    return 0;
  });
}

const char* cosyfast_request_finish_reason(const CosyfastRequest* request) {
  return Guard<const char*>("", [&] {
    RequireArg(request != nullptr, "the request is NULL");
    return cosyfast::FinishReasonName(request->queue->reason());
  });
}

int32_t cosyfast_request_min_len(const CosyfastRequest* request) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(request != nullptr, "the request is NULL");
    return request->session->min_len();
  });
}

int32_t cosyfast_request_max_len(const CosyfastRequest* request) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(request != nullptr, "the request is NULL");
    return request->session->max_len();
  });
}

int32_t cosyfast_request_prompt_len(const CosyfastRequest* request) {
  return Guard<int32_t>(-1, [&] {
    RequireArg(request != nullptr, "the request is NULL");
    return request->session->prompt_len();
  });
}

void cosyfast_request_destroy(CosyfastRequest* request) {
  Guard<int>(0, [&] {
    delete request;  // cancels it if still running
    return 0;
  });
}

const CosyfastResult* cosyfast_generate(CosyfastModel* model, const CosyfastInput* input,
                                        const CosyfastRequestOptions* options, CosyfastTokenCallback callback,
                                        void* user_data) {
  return Guard<const CosyfastResult*>(nullptr, [&]() -> const CosyfastResult* {
    std::unique_ptr<CosyfastRequest> request(StartRequest(model, input, options));
    auto result = std::make_unique<Result>();
    bool stopped = false;
    // Tokens produced after the callback said stop (before the scheduler saw the cancel) are
    // read and dropped, so the result ends exactly at the token the callback stopped on.
    while (std::optional<int32_t> t = request->queue->Next(-1.0)) {
      if (stopped) continue;
      result->token_storage.push_back(*t);
      if (callback && callback(*t, user_data) == 0) {
        stopped = true;
        request->session->RequestCancel();
      }
    }
    const FinishReason reason = request->queue->reason();
    if (reason == FinishReason::kError) throw std::runtime_error("generation failed: " + request->queue->error());
    result->reason_storage = cosyfast::FinishReasonName(stopped ? FinishReason::kCancelled : reason);
    result->tokens = result->token_storage.data();
    result->num_tokens = static_cast<int32_t>(result->token_storage.size());
    result->finish_reason = result->reason_storage.c_str();
    return result.release();
  });
}

void cosyfast_result_destroy(const CosyfastResult* result) {
  delete static_cast<const Result*>(result);
}

}  // extern "C"
