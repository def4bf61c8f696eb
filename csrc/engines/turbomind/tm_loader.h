// Loads cosyfast's Qwen2 weights into a new TurboMind (lmdeploy 0.16.0 built from source with
// cosyfast's patch) from C++, without lmdeploy's Python converter: the engine config, the module
// tree and every tensor as that converter makes them (docs/turbomind_weights.md), so that the
// engine gives bit-identical logits to one loaded by Python. The C API and cosyfast-host load
// GPU models this way; the Python package can too (cosyfast/turbomind.py).
#pragma once

#include <memory>
#include <string>

#include "engines/cpu_qwen2.h"
#include "src/turbomind/engine/engine_config.h"
#include "src/turbomind/turbomind.h"

namespace cosyfast::tm {

struct LoadOptions {
  int device = 0;
  int max_batch = 0;
  int max_session_len = 0;
  // The share of the GPU memory free once the weights are in that TurboMind's KV cache takes,
  // in (0, 1) (PlanGpuMemory + CacheMaxEntryCount compute it from a budget).
  double cache_max_entry_count = 0;
  // Decode-sized GEMMs (M <= 256) through cuBLASLt instead of TurboMind's own kernels (the
  // cosyfast_decode_gemm hook of the patch); false gives TurboMind's GEMMs as lmdeploy ships them.
  bool fast_decode = true;
  // Decode steps replay their decoder layers from CUDA graphs (the cosyfast_decode_graph hook of
  // the patch; third_party/turbomind/CUDA_GRAPHS.md). Only together with fast_decode (the capture
  // was reasoned about with its GEMMs): fast_decode = false is TurboMind as lmdeploy ships it,
  // graphs or not.
  bool decode_graphs = true;
  // Throws std::invalid_argument naming the first bad field.
  void Validate() const;
};

// TurboMind's engine config for a cosyfast model: lmdeploy's TurbomindEngineConfig defaults as
// its Python engine copies them, with cosyfast's dtype, batch, session length, cache share and
// device. One GPU, no tensor parallelism.
turbomind::EngineConfig MakeEngineConfig(const LoadOptions& options);

// The context factory cosyfast's TurboMinds are made with: no Python context on the signal
// thread (cosyfast's callbacks are C++), so the token path never waits for Python's GIL.
turbomind::TurboMind::FFICtxFactory NoFfiContext();

// CUDA devices in this process; 0 when there is no driver or GPU (never throws).
int CudaDeviceCount();
// (free, total) bytes on `device`; throws std::runtime_error with CUDA's message.
std::pair<int64_t, int64_t> CudaMemory(int device);

// Everything is checked before TurboMind is touched (its own checks abort the process), and
// errors are std::invalid_argument / std::runtime_error sentences. `weights.vocab_size` rows are
// padded to TurboMindPaddedVocab (engines/turbomind_layout.h). Blocks while TurboMind uploads,
// prepares and tunes (seconds).
std::unique_ptr<turbomind::TurboMind> LoadTurboMind(const CpuQwen2Config& config, const CpuQwen2Weights& weights,
                                                    const LoadOptions& options);

}  // namespace cosyfast::tm
