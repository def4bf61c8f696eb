/* cosyfast C API: run a CosyVoice2/3 LLM stage (text + voice prompt -> speech tokens) from a C or
 * C++ host without Python.
 *
 * A model is loaded from a bundle directory (written once by `cosyfast export-bundle` or
 * cosyfast.bundle.export_cpu_bundle) and runs on one of two engines, with CosyVoice's exact
 * repetition-aware sampling:
 *  - "cpu" (default): cosyfast's float32 CPU engine, the same C++ code as the Python package's
 *    engine="cpu", so the same request and seed give the same tokens;
 *  - "turbomind": the GPU engine (a cosyfast built with COSYFAST_TURBOMIND=ON), TurboMind with
 *    cosyfast's sampling in its loop; the weights go from the bundle into TurboMind in C++, so the
 *    same request and seed give the same tokens as the Python package's engine="turbomind".
 *
 * Conventions
 *  - Handles are opaque. Every *_create / *_start / cosyfast_generate is paired with a *_destroy.
 *  - No C++ exception crosses this boundary. A function that fails returns NULL (handles,
 *    results) or a negative status, and records a sentence for the calling thread that
 *    cosyfast_last_error() returns (valid until that thread's next cosyfast call). Success
 *    clears it.
 *  - Struct arguments: start from cosyfast_model_config_default() /
 *    cosyfast_request_options_default() and change the fields you need.
 *  - Threads: a model may be used from many threads at once; its requests step together (on the
 *    CPU engine's scheduler thread, or in TurboMind's own loop). A request handle belongs to one
 *    thread at a time, except cosyfast_request_cancel, which any thread may call. Callbacks run
 *    on the calling thread.
 *  - GPU errors (no such device, a budget too small, a failed CUDA call while loading) come back
 *    as sentences like any other; everything TurboMind would abort on is checked before it runs.
 *  - Lifetime: a model's engine is freed when the model and every request started on it are
 *    destroyed, in any order.
 *  - The CPU engine uses OpenMP. Run the process with OMP_WAIT_POLICY=PASSIVE (read when the
 *    OpenMP runtime loads) so that its idle threads do not spin between steps.
 */
#ifndef COSYFAST_C_API_H_
#define COSYFAST_C_API_H_

#include <stdint.h>

#if defined(_WIN32)
#define COSYFAST_API
#else
#define COSYFAST_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define COSYFAST_C_API_VERSION 2

typedef struct CosyfastModel CosyfastModel;
typedef struct CosyfastRequest CosyfastRequest;

typedef struct CosyfastModelConfig {
  const char* bundle_dir;   /* directory written by export_cpu_bundle (required) */
  int32_t max_batch;        /* most sessions stepped together in one round (default 256) */
  int32_t max_session_len;  /* longest prompt + generated sequence (default 4096) */
  int32_t table_bfloat16;   /* 1: keep the prompt tables in bfloat16 (half the memory); default 0 */
  int32_t replicas;         /* engine copies; each request goes to the least loaded (default 1);
                               turbomind: replica i runs on GPU device + i */
  /* Added in C API version 2. */
  const char* engine;       /* "cpu" (default, also for NULL) or "turbomind" */
  int32_t device;           /* turbomind: the CUDA device of the first replica (default 0) */
  double gpu_memory;        /* turbomind: what one engine may allocate on its GPU, in GB (> 1) or as
                               a fraction (<= 1) of the GPU's memory; 0 (default): the weights, the
                               KV cache of max_batch sessions of max_session_len, and a workspace */
} CosyfastModelConfig;

/* The options of one request; the defaults are CosyVoice's. */
typedef struct CosyfastRequestOptions {
  uint64_t seed;                 /* the session's random stream (default 0) */
  double top_p;                  /* nucleus mass (0.8) */
  int32_t top_k;                 /* nucleus size cap (25); top_k 1 with ras 0 is greedy */
  int32_t ras;                   /* 1: repetition-aware sampling (default), 0: plain nucleus */
  int32_t win_size;              /* RAS window (10) */
  double tau_r;                  /* RAS re-draw threshold ratio (0.1) */
  int32_t exclude_repeated;      /* 1: re-draw without the repeated token (current upstream) */
  double min_token_text_ratio;   /* min_len = text_len * ratio (2) */
  double max_token_text_ratio;   /* max_len = text_len * ratio (20) */
  int32_t max_len;               /* > 0 replaces the computed max_len; -1: unset (default) */
  int32_t min_len;               /* >= 0 replaces the computed min_len; -1: unset (default) */
} CosyfastRequestOptions;

/* Token ids of one request. The model sees prompt_text_ids followed by text_ids (CosyVoice's
 * order); min/max_len count text_ids only. A pointer may be NULL when its count is 0. */
typedef struct CosyfastInput {
  const int32_t* text_ids;
  int32_t num_text_ids;
  const int32_t* prompt_text_ids;
  int32_t num_prompt_text_ids;
  const int32_t* prompt_speech_tokens;
  int32_t num_prompt_speech_tokens;
} CosyfastInput;

/* Every token of one request, and why it ended: "stop_token", "max_len" or "cancelled"
 * (the callback returned 0). Owned by the library; free with cosyfast_result_destroy. */
typedef struct CosyfastResult {
  const int32_t* tokens;
  int32_t num_tokens;
  const char* finish_reason;
} CosyfastResult;

/* Called once per speech token, in order, on the thread that called cosyfast_generate.
 * Return nonzero to go on, 0 to stop the request after this token. */
typedef int32_t (*CosyfastTokenCallback)(int32_t token, void* user_data);

/* cosyfast_request_next's results. */
#define COSYFAST_NEXT_TOKEN 1   /* *token holds the next token */
#define COSYFAST_NEXT_END 0     /* the request finished; see cosyfast_request_finish_reason */
#define COSYFAST_NEXT_ERROR (-1) /* generation failed or a bad argument; see cosyfast_last_error */
#define COSYFAST_NEXT_TIMEOUT (-2) /* no token within timeout_s; the request goes on */

COSYFAST_API const char* cosyfast_version(void);
/* The calling thread's last error, or "" when its last call succeeded. Never NULL. */
COSYFAST_API const char* cosyfast_last_error(void);

COSYFAST_API CosyfastModelConfig cosyfast_model_config_default(void);
COSYFAST_API CosyfastRequestOptions cosyfast_request_options_default(void);

/* Loads a bundle and starts the model's engine. NULL on failure (a missing or corrupt bundle,
 * a bad config value, an engine this build lacks, no such GPU, a memory budget too small). */
COSYFAST_API CosyfastModel* cosyfast_model_create(const CosyfastModelConfig* config);
/* Cancels the model's running requests. NULL is ignored. */
COSYFAST_API void cosyfast_model_destroy(CosyfastModel* model);

COSYFAST_API const char* cosyfast_model_kind(const CosyfastModel* model); /* "cosyvoice2"/"cosyvoice3" */
COSYFAST_API int32_t cosyfast_model_hidden_size(const CosyfastModel* model);
COSYFAST_API int32_t cosyfast_model_vocab_size(const CosyfastModel* model);     /* logits row width */
COSYFAST_API int32_t cosyfast_model_max_session_len(const CosyfastModel* model);
COSYFAST_API int32_t cosyfast_model_live_sessions(const CosyfastModel* model);  /* started, not finished */

/* Checks the request and queues it (its prompt is assembled here on the cpu engine, later on
 * turbomind, by the model's starter thread, in order); returns at once. NULL on failure (an id
 * out of range, an empty text, a bad option: the message names it). A failure after that (the
 * engine refusing the request) ends the request with finish reason "error". */
COSYFAST_API CosyfastRequest* cosyfast_request_start(CosyfastModel* model, const CosyfastInput* input,
                                                     const CosyfastRequestOptions* options);
/* Waits for the next token (timeout_s < 0: forever). Returns one of COSYFAST_NEXT_*. */
COSYFAST_API int32_t cosyfast_request_next(CosyfastRequest* request, double timeout_s, int32_t* token);
/* Asks the request to stop at the next round; tokens already produced stay readable. */
COSYFAST_API void cosyfast_request_cancel(CosyfastRequest* request);
/* "none" while running, then "stop_token", "max_len", "cancelled" or "error". */
COSYFAST_API const char* cosyfast_request_finish_reason(const CosyfastRequest* request);
COSYFAST_API int32_t cosyfast_request_min_len(const CosyfastRequest* request);
COSYFAST_API int32_t cosyfast_request_max_len(const CosyfastRequest* request);
COSYFAST_API int32_t cosyfast_request_prompt_len(const CosyfastRequest* request);
/* Cancels the request if it is still running and frees the handle. NULL is ignored. */
COSYFAST_API void cosyfast_request_destroy(CosyfastRequest* request);

/* Runs one request to completion. `callback` (may be NULL) sees every token as it is produced
 * and can stop the request early. NULL on failure. */
COSYFAST_API const CosyfastResult* cosyfast_generate(CosyfastModel* model, const CosyfastInput* input,
                                                     const CosyfastRequestOptions* options,
                                                     CosyfastTokenCallback callback, void* user_data);
COSYFAST_API void cosyfast_result_destroy(const CosyfastResult* result);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* COSYFAST_C_API_H_ */
