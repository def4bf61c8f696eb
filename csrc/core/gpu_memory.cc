#include "core/gpu_memory.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "core/messages.h"

namespace cosyfast {
namespace {

constexpr double kGib = static_cast<double>(int64_t{1} << 30);
// Past this a budget in GB is a typo (a byte count, say), not a GPU.
constexpr double kMaxGpuMemory = 1e6;
constexpr int64_t kBf16Bytes = 2;

// Bytes as the messages print them: GiB with two decimals.
std::string Gb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / kGib);
  return buf;
}

// Sizes come from a host's config and options: an absurd one must be refused, not wrap around.
int64_t Checked(bool overflowed, int64_t value) {
  Require(!overflowed, "the GPU memory plan does not fit in 64-bit byte counts: the model, max_batch or "
                       "max_session_len is far too large");
  return value;
}
int64_t Mul(int64_t a, int64_t b) {
  int64_t r = 0;
  const bool o = __builtin_mul_overflow(a, b, &r);
  return Checked(o, r);
}
int64_t Add(int64_t a, int64_t b) {
  int64_t r = 0;
  const bool o = __builtin_add_overflow(a, b, &r);
  return Checked(o, r);
}
int64_t Sub(int64_t a, int64_t b) {
  int64_t r = 0;
  const bool o = __builtin_sub_overflow(a, b, &r);
  return Checked(o, r);
}

// bf16 bytes of the weights TurboMind holds: embedding and lm_head of padded_vocab rows, the final
// norm, and every layer's tensors as cpu_qwen2.h describes them.
int64_t WeightsBytes(const CpuQwen2Config& c, int padded_vocab) {
  int64_t per_layer = 0;
  for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) {
    int64_t size = 1;
    for (const int64_t dim : Qwen2Shape(t, c)) size = Mul(size, dim);
    per_layer = Add(per_layer, size);
  }
  int64_t params = Mul(Mul(2, padded_vocab), c.hidden);  // embedding + lm_head
  params = Add(params, c.hidden);                        // the final norm
  params = Add(params, Mul(c.layers, per_layer));
  return Mul(kBf16Bytes, params);
}

}  // namespace

bool GpuMemoryAccepted(double gpu_memory) {
  return gpu_memory >= 0.0 && gpu_memory < kMaxGpuMemory;  // false for NaN
}

std::string GpuMemoryRefusal(const std::string& got) {
  return "gpu_memory must be GB (> 1) or a fraction of the GPU's memory (<= 1), got " + got;
}

GpuMemoryPlan PlanGpuMemory(const CpuQwen2Config& config, int padded_vocab, int max_batch, int max_session_len,
                            int64_t total_bytes, double gpu_memory) {
  // The plan reads the shape only: the config's own max_session_len (the CPU engine's limit) is
  // not this engine's, so it is not what is checked.
  CpuQwen2Config shape = config;
  shape.max_session_len = 1;
  shape.Validate();
  Require(padded_vocab >= 1, "padded_vocab must be >= 1, got " + std::to_string(padded_vocab));
  Require(max_batch >= 1, "max_batch must be >= 1, got " + std::to_string(max_batch));
  Require(max_session_len >= 1, "max_session_len must be >= 1, got " + std::to_string(max_session_len));
  if (!GpuMemoryAccepted(gpu_memory)) throw std::invalid_argument(GpuMemoryRefusal(Num(gpu_memory)));

  // K and V of every layer and KV head, bf16, per position; a session takes whole blocks.
  const int64_t per_position = Mul(Mul(Mul(config.layers, 2), Mul(config.kv_heads, config.head_dim)), kBf16Bytes);
  const int64_t blocks_per_session = (int64_t{max_session_len} + kCacheBlockTokens - 1) / kCacheBlockTokens;
  const int64_t per_session = Mul(Mul(blocks_per_session, kCacheBlockTokens), per_position);

  GpuMemoryPlan plan;
  plan.weights_bytes = WeightsBytes(config, padded_vocab);
  plan.kv_bytes = Mul(max_batch, per_session);
  plan.workspace_bytes = kGpuWorkspaceBytes;
  const int64_t needed = Add(Add(plan.weights_bytes, plan.kv_bytes), plan.workspace_bytes);
  if (gpu_memory == 0.0) {
    plan.budget_bytes = needed;
  } else if (gpu_memory <= 1.0) {
    plan.budget_bytes = static_cast<int64_t>(gpu_memory * static_cast<double>(total_bytes));  // truncated, as int()
  } else {
    plan.budget_bytes = static_cast<int64_t>(gpu_memory * kGib);
  }

  Require(plan.budget_bytes <= total_bytes,
          "gpu_memory " + Gb(plan.budget_bytes) + " GB is more than the GPU's " + Gb(total_bytes) + " GB");
  if (plan.cache_bytes() < plan.kv_bytes) {
    const int64_t fits = std::max<int64_t>(plan.cache_bytes(), 0) / per_session;
    throw std::invalid_argument("gpu_memory " + Gb(plan.budget_bytes) + " GB cannot hold " + std::to_string(max_batch) +
                                " sessions of " + std::to_string(max_session_len) + " positions: weights " +
                                Gb(plan.weights_bytes) + " GB + KV cache " + Gb(plan.kv_bytes) + " GB + workspace " +
                                Gb(plan.workspace_bytes) + " GB = " + Gb(needed) + " GB; it holds " +
                                std::to_string(fits) +
                                " such sessions: lower max_batch or max_session_len, or give more memory");
  }
  return plan;
}

double CacheMaxEntryCount(const GpuMemoryPlan& plan, int64_t free_bytes) {
  Require(free_bytes >= 0, "free_bytes must be >= 0, got " + std::to_string(free_bytes));
  const int64_t free_then = Sub(Sub(free_bytes, plan.weights_bytes), plan.workspace_bytes);
  Require(plan.cache_bytes() < free_then, "the GPU has " + Gb(free_bytes) + " GB free, too little for a budget of " +
                                              Gb(plan.budget_bytes) + " GB");
  return static_cast<double>(plan.cache_bytes()) / static_cast<double>(free_then);
}

}  // namespace cosyfast
