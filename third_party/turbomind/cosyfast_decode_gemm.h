// cosyfast: decode-sized GEMMs through cuBLASLt, a hook in TurboMind's LlamaLinear.
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/models/llama/.
//
// Why: at the batch sizes of a decode step (M = live sessions, <= 256) TurboMind 0.16's sm90 bf16
// GEMMs took 1.28 ms per step at M = 1 on an H200, where cuBLAS runs the same 97 shapes in about
// 0.55 ms (shared/perf). So for dense bf16/fp16 weights and M <= kMaxRows this hook runs
// D = A * W with cuBLASLt (fp32 accumulation), and for Hopper's fused gate/up weight it
// accumulates [g64|u64] blocks in fp32 and applies silu(g) * u in fp32 with one bf16 rounding, as
// TurboMind's fused epilogue does. Prefill-sized GEMMs, quantised or grouped weights and anything
// else stay with TurboMind's own dispatch.
//
// The switch is per engine: a LlamaLinear (one per TurboMind context) reads FastDecode() when it
// is created, so cosyfast's loader decides per load (fast_decode=) and lmdeploy's own use of this
// build, which never sets it, keeps TurboMind as shipped.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "src/turbomind/core/core.h"
#include "src/turbomind/kernels/gemm/types.h"
#include "src/turbomind/models/linear_weight.h"

namespace turbomind::cosyfast {

// Largest M the decode GEMM hook can take: the default max_batch, so every pure decode step;
// prefill is larger.
constexpr int kDecodeMaxRows = 256;

// The largest M the hook takes, for all GEMMs and for the fused gate/up one. The gate/up GEMM goes
// through an fp32 accumulator and a separate SiLU kernel (its epilogue is not a cuBLASLt one),
// whose traffic grows with M while TurboMind's fused epilogue has none, so past some M TurboMind's
// kernel might win (it then runs inside the decode graphs too: measured capturable at 128 and 256
// rows, third_party/turbomind/CUDA_GRAPHS.md). Measured on an H100 (benchmarks/results/
// h100-2026-12-06-s10, gate/up left to TurboMind above 64 rows): 5% slower at 128 sessions, even
// at 256, so both default to kDecodeMaxRows. COSYFAST_DECODE_GEMM_MAX_ROWS and
// COSYFAST_GATED_GEMM_MAX_ROWS (0..256; unset or empty: the default) override them at load, for
// measuring on other GPUs.
struct DecodeRowLimits {
    int all   = kDecodeMaxRows;
    int gated = kDecodeMaxRows;
};

// Engines created while a DecodeScope is alive take the decode GEMM path when `fast_decode`, and
// replay their decode steps from CUDA graphs when `decode_graphs` too (cosyfast_decode_graph.h:
// the capture was reasoned about with the hook's GEMMs, so no graphs without fast_decode).
// Scopes serialise (one load at a time decides); outside any scope new engines take neither.
// The row limits are read from the environment here, before any engine exists: a bad value
// throws std::invalid_argument naming the variable, and nothing is half-built.
class DecodeScope {
public:
    DecodeScope(bool fast_decode, bool decode_graphs);
    ~DecodeScope();
    DecodeScope(const DecodeScope&)            = delete;
    DecodeScope& operator=(const DecodeScope&) = delete;

private:
    DecodeRowLimits              limits_;  // first: parsed (and refused) before anything changes
    std::unique_lock<std::mutex> lock_;
    DecodeRowLimits              previous_limits_;  // published before the switches below turn on
    bool                         previous_fast_decode_;
    bool                         previous_decode_graphs_;
};
bool FastDecode();
bool DecodeGraphsOn();

// GEMMs taken by the hook and left to TurboMind, process-wide, since the start (for tests and the
// bench: they show the switch works and how often a step falls back).
struct DecodeGemmCounts {
    int64_t taken;
    int64_t left;
};
DecodeGemmCounts GetDecodeGemmCounts();

class DecodeGemm {
public:
    static constexpr int kMaxRows = kDecodeMaxRows;

    DecodeGemm();  // reads FastDecode() and the scope's row limits
    ~DecodeGemm();
    DecodeGemm(const DecodeGemm&)            = delete;
    DecodeGemm& operator=(const DecodeGemm&) = delete;

    // Runs output = input * weight (plus the fused gate/up SiLU when the weight's epilogue asks for
    // it) on `stream` and returns true, or returns false having done nothing, when this GEMM is not
    // one it takes. desc_A/desc_D are LlamaLinear's operand layouts.
    bool Forward(const Tensor&              input,
                 const gemm::MatrixLayout&  desc_A,
                 const LinearWeight&        weight,
                 Tensor&                    output,
                 const gemm::MatrixLayout&  desc_D,
                 cudaStream_t               stream);

private:
    // One cuBLASLt problem: descriptors and the heuristic's algorithm, made on first use.
    struct Plan {
        cublasLtMatmulDesc_t   op{};
        cublasLtMatrixLayout_t w{}, x{}, c{};
        cublasLtMatmulAlgo_t   algo{};
        bool                   valid = false;
    };
    // m, n, k, weight order, ldw, ldx, ldc, input type, output type
    using Key = std::tuple<int, int, int, int, int, int, int, int, int>;

    bool        Takes(const Tensor& input, const gemm::MatrixLayout& desc_A, const LinearWeight& weight,
                      const Tensor& output) const;
    const Plan& GetPlan(const Key& key);

    bool                 enabled_;
    DecodeRowLimits      limits_;
    cublasLtHandle_t     handle_{};
    void*                workspace_{};
    std::map<Key, Plan>  plans_;
};

}  // namespace turbomind::cosyfast
