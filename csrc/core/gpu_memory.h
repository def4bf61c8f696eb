// The GPU memory plan of one TurboMind engine: what it may allocate on its GPU and how that is
// split between weights, KV cache and workspace. The one implementation: the Python package
// (cosyfast.turbomind, through _core.plan_gpu_memory) and the C API use it. No CUDA here: the
// caller measures the GPU (total and free bytes) and passes the numbers in.
#pragma once

#include <cstdint>
#include <string>

#include "engines/cpu_qwen2.h"

namespace cosyfast {

// TurboMind's own buffers besides weights and KV cache (activations for max_prefill_token_num
// tokens, logits, sampling state, cuBLAS workspace), measured on an H200 (benchmarks/README.md):
// the default budget leaves this much on top of weights and cache.
inline constexpr int64_t kGpuWorkspaceBytes = (int64_t{3} << 30) / 2;  // 1.5 GiB
// TurboMind's cache_block_seq_len: KV is allocated in blocks of this many positions, so a session
// takes its length rounded up to a whole block.
inline constexpr int kCacheBlockTokens = 64;

struct GpuMemoryPlan {
  int64_t budget_bytes = 0;     // all the engine may allocate
  int64_t weights_bytes = 0;    // bf16 weights
  int64_t kv_bytes = 0;         // the KV cache max_batch sessions of max_session_len need
  int64_t workspace_bytes = 0;  // kGpuWorkspaceBytes
  // What the KV cache gets: the budget less weights and workspace (>= kv_bytes in a plan
  // PlanGpuMemory returned).
  int64_t cache_bytes() const { return budget_bytes - weights_bytes - workspace_bytes; }
};

// The budget of one engine with a bf16 Qwen2 of `config` (its max_session_len is not used) and a
// vocabulary padded to `padded_vocab` rows, on a GPU of `total_bytes`. gpu_memory: 0, the default:
// the weights, the KV cache of max_batch sessions of max_session_len and the workspace; > 1: GB
// (GiB); in (0, 1]: a fraction of total_bytes. Throws std::invalid_argument, with the numbers, for
// a gpu_memory that is negative, NaN, infinite or >= 1e6, a budget over total_bytes, or one that
// cannot hold max_batch sessions (also for a bad shape, a size < 1, or sizes past 64 bits).
GpuMemoryPlan PlanGpuMemory(const CpuQwen2Config& config, int padded_vocab, int max_batch, int max_session_len,
                            int64_t total_bytes, double gpu_memory);

// TurboMind's cache_max_entry_count for `plan`: TurboMind sizes its KV cache as a share of the
// memory free once the weights are in, so the plan's cache is expressed as a share of what will be
// free then (free_bytes, measured before the load, less weights and workspace). Throws
// std::invalid_argument when free_bytes is too little for the budget.
double CacheMaxEntryCount(const GpuMemoryPlan& plan, int64_t free_bytes);

// Whether PlanGpuMemory takes this gpu_memory: 0, or more and below 1e6 (NaN is not).
bool GpuMemoryAccepted(double gpu_memory);
// The sentence that refuses a gpu_memory value; `got` is the value as the caller's language
// prints it (the Python binding: its repr, also of a bool or a string).
std::string GpuMemoryRefusal(const std::string& got);

}  // namespace cosyfast
