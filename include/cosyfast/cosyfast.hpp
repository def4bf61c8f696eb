// cosyfast C++ API: a header-only RAII layer over the C API (c_api.h). Errors become
// cosyfast::api::Error exceptions here, in the host's own code; nothing throws across the
// library boundary.
//
//   cosyfast::api::Model model("/path/to/bundle");
//   cosyfast::api::Options options = cosyfast::api::DefaultOptions();
//   options.seed = 7;
//   cosyfast::api::Result r = model.Generate({{1, 2, 3}, {}, {}}, options,
//                                            [](int32_t token) { return true; /* go on */ });
//
// Streaming: Request req = model.Start(input, options); int32_t t; while (req.Next(t)) ...;
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cosyfast/c_api.h"

namespace cosyfast::api {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Options = CosyfastRequestOptions;
using ModelConfig = CosyfastModelConfig;

inline Options DefaultOptions() { return cosyfast_request_options_default(); }
inline ModelConfig DefaultModelConfig() { return cosyfast_model_config_default(); }

struct Input {
  std::vector<int32_t> text_ids;
  std::vector<int32_t> prompt_text_ids;
  std::vector<int32_t> prompt_speech_tokens;

  CosyfastInput View() const {
    return CosyfastInput{text_ids.data(), static_cast<int32_t>(text_ids.size()),
                         prompt_text_ids.data(), static_cast<int32_t>(prompt_text_ids.size()),
                         prompt_speech_tokens.data(), static_cast<int32_t>(prompt_speech_tokens.size())};
  }
};

struct Result {
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "stop_token", "max_len" or "cancelled"
};

[[noreturn]] inline void ThrowLastError() { throw Error(cosyfast_last_error()); }

// One request in flight; destroying it cancels the request.
class Request {
 public:
  explicit Request(CosyfastRequest* handle) : handle_(handle) {}
  ~Request() { cosyfast_request_destroy(handle_); }
  Request(Request&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Request& operator=(Request&& other) noexcept {
    std::swap(handle_, other.handle_);
    return *this;
  }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // The next token into `token` (true), or false at the end. Throws Error if generation failed
  // or (timeout_s >= 0) no token came in time.
  bool Next(int32_t& token, double timeout_s = -1.0) {
    switch (cosyfast_request_next(handle_, timeout_s, &token)) {
      case COSYFAST_NEXT_TOKEN: return true;
      case COSYFAST_NEXT_END: return false;
      default: ThrowLastError();
    }
  }
  void Cancel() { cosyfast_request_cancel(handle_); }
  std::string finish_reason() const { return cosyfast_request_finish_reason(handle_); }
  int min_len() const { return cosyfast_request_min_len(handle_); }
  int max_len() const { return cosyfast_request_max_len(handle_); }
  int prompt_len() const { return cosyfast_request_prompt_len(handle_); }

 private:
  CosyfastRequest* handle_;
};

class Model {
 public:
  explicit Model(const std::string& bundle_dir) : Model(WithDir(DefaultModelConfig(), bundle_dir)) {}
  explicit Model(const ModelConfig& config) : handle_(cosyfast_model_create(&config)) {
    if (!handle_) ThrowLastError();
  }
  ~Model() { cosyfast_model_destroy(handle_); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  std::string kind() const { return cosyfast_model_kind(handle_); }
  int hidden_size() const { return cosyfast_model_hidden_size(handle_); }
  int vocab_size() const { return cosyfast_model_vocab_size(handle_); }
  int max_session_len() const { return cosyfast_model_max_session_len(handle_); }
  int live_sessions() const { return cosyfast_model_live_sessions(handle_); }

  Request Start(const Input& input, const Options& options) {
    const CosyfastInput view = input.View();
    CosyfastRequest* r = cosyfast_request_start(handle_, &view, &options);
    if (!r) ThrowLastError();
    return Request(r);
  }

  // Runs one request to completion; `on_token` (optional) returns false to stop early. An
  // exception thrown by `on_token` stops the request and is rethrown here.
  Result Generate(const Input& input, const Options& options,
                  const std::function<bool(int32_t)>& on_token = nullptr) {
    struct Context {
      const std::function<bool(int32_t)>* on_token;
      std::exception_ptr error;
    } ctx{&on_token, nullptr};
    CosyfastTokenCallback trampoline = [](int32_t token, void* user) -> int32_t {
      auto* c = static_cast<Context*>(user);
      try {
        return (*c->on_token)(token) ? 1 : 0;
      } catch (...) {
        c->error = std::current_exception();
        return 0;
      }
    };
    const CosyfastInput view = input.View();
    const CosyfastResult* r = cosyfast_generate(handle_, &view, &options, on_token ? trampoline : nullptr, &ctx);
    if (!r) ThrowLastError();
    Result out{std::vector<int32_t>(r->tokens, r->tokens + r->num_tokens), r->finish_reason};
    cosyfast_result_destroy(r);
    if (ctx.error) std::rethrow_exception(ctx.error);
    return out;
  }

 private:
  static ModelConfig WithDir(ModelConfig config, const std::string& dir) {
    config.bundle_dir = dir.c_str();  // read during construction only
    return config;
  }

  CosyfastModel* handle_;
};

}  // namespace cosyfast::api
