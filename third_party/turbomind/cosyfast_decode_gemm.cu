// cosyfast: decode-sized GEMMs through cuBLASLt (see cosyfast_decode_gemm.h for why and when).
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/models/llama/.

#include "src/turbomind/models/llama/cosyfast_decode_gemm.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "src/turbomind/core/cuda_data_type.h"
#include "src/turbomind/utils/cuda_utils.h"

namespace turbomind::cosyfast {

namespace {

std::mutex           g_scope_mutex;
std::atomic<bool>    g_fast_decode{false};
std::atomic<bool>    g_decode_graphs{false};
std::atomic<int64_t> g_taken{0};
std::atomic<int64_t> g_left{0};
std::atomic<DecodeRowLimits> g_limits{DecodeRowLimits{}};  // the scope's, for engines made in it

// cuBLASLt's recommended workspace on Hopper; its split-K kernels for M = 1 use it.
constexpr size_t kWorkspaceBytes = 32u << 20;
// Every operand pointer and leading dimension is asked to be 16-byte aligned (the heuristic is
// told so): TurboMind's activations and weights are, a slice that is not falls back.
constexpr uintptr_t kAlignment = 16;

bool Aligned(const void* p)
{
    return reinterpret_cast<uintptr_t>(p) % kAlignment == 0;
}

bool IsHalfType(DataType t)
{
    return t == kBfloat16 || t == kHalf;
}

// A row limit from the environment: unset or empty keeps `fallback`; anything but an integer in 0..256 is
// refused with the variable's name (a typo must not silently measure the default).
int RowLimitFromEnv(const char* name, int fallback)
{
    const char* text = std::getenv(name);
    if (!text || !*text) {
        return fallback;
    }
    char*      end   = nullptr;
    const long value = std::strtol(text, &end, 10);
    if (*end != '\0' || value < 0 || value > DecodeGemm::kMaxRows) {
        throw std::invalid_argument(std::string(name) + " must be an integer from 0 to "
                                    + std::to_string(DecodeGemm::kMaxRows) + ", got '" + text + "'");
    }
    return static_cast<int>(value);
}

DecodeRowLimits RowLimitsFromEnv()
{
    const DecodeRowLimits defaults;
    return {RowLimitFromEnv("COSYFAST_DECODE_GEMM_MAX_ROWS", defaults.all),
            RowLimitFromEnv("COSYFAST_GATED_GEMM_MAX_ROWS", defaults.gated)};
}

void CheckLt(cublasStatus_t status, const char* what)
{
    if (status != CUBLAS_STATUS_SUCCESS) {
        TM_LOG_ERROR("cosyfast decode GEMM: {} failed: {}", what, cublasGetStatusString(status));
    }
}

// Hopper's fused gate/up weight puts gate and up in alternating 64-column blocks: accumulator
// column g * 128 + j is gate(g * 64 + j), g * 128 + 64 + j is up(g * 64 + j). Output column
// g * 64 + j = silu(gate) * up, computed in fp32 as TurboMind's epilogue does, rounded once.
constexpr int kGateUpBlock = 64;

template<class T>
__global__ void GatedSiluKernel(T* out, int ld_out, const float* acc, int ld_acc, int rows, int inter)
{
    const int64_t total = (int64_t)rows * inter;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int    r    = (int)(i / inter);
        const int    col  = (int)(i % inter);
        const int    g    = col / kGateUpBlock;
        const int    j    = col % kGateUpBlock;
        const float* row  = acc + (int64_t)r * ld_acc + g * 2 * kGateUpBlock + j;
        const float  gate = row[0];
        const float  up   = row[kGateUpBlock];
        out[(int64_t)r * ld_out + col] = T(__fdividef(gate, 1.f + __expf(-gate)) * up);
    }
}

}  // namespace

DecodeScope::DecodeScope(bool fast_decode, bool decode_graphs):
    limits_{fast_decode ? RowLimitsFromEnv() : DecodeRowLimits{}},
    lock_{g_scope_mutex},
    previous_limits_{g_limits.exchange(limits_)},
    previous_fast_decode_{g_fast_decode.exchange(fast_decode)},
    previous_decode_graphs_{g_decode_graphs.exchange(fast_decode && decode_graphs)}  // graphs only over the hook's GEMMs
{
}

DecodeScope::~DecodeScope()
{
    g_fast_decode   = previous_fast_decode_;
    g_decode_graphs = previous_decode_graphs_;
    g_limits.store(previous_limits_);
}

bool FastDecode()
{
    return g_fast_decode.load();
}

bool DecodeGraphsOn()
{
    return g_decode_graphs.load();
}

DecodeGemmCounts GetDecodeGemmCounts()
{
    return {g_taken.load(std::memory_order_relaxed), g_left.load(std::memory_order_relaxed)};
}

DecodeGemm::DecodeGemm(): enabled_{FastDecode()}
{
    if (!enabled_) {
        return;
    }
    limits_ = g_limits.load();  // the scope's, read once: the load decides, not each step
    if (cublasLtCreate(&handle_) != CUBLAS_STATUS_SUCCESS || cudaMalloc(&workspace_, kWorkspaceBytes) != cudaSuccess) {
        TM_LOG_WARNING("cosyfast decode GEMM: no cuBLASLt handle or workspace; TurboMind's GEMMs run instead");
        (void)cudaGetLastError();
        enabled_ = false;
    }
}

DecodeGemm::~DecodeGemm()
{
    for (auto& [key, plan] : plans_) {
        cublasLtMatrixLayoutDestroy(plan.w);
        cublasLtMatrixLayoutDestroy(plan.x);
        cublasLtMatrixLayoutDestroy(plan.c);
        cublasLtMatmulDescDestroy(plan.op);
    }
    if (workspace_) {
        cudaFree(workspace_);
    }
    if (handle_) {
        cublasLtDestroy(handle_);
    }
}

bool DecodeGemm::Takes(const Tensor&             input,
                       const gemm::MatrixLayout& desc_A,
                       const LinearWeight&       weight,
                       const Tensor&             output) const
{
    const auto& W = weight.weight;
    const auto& k = weight.k_desc;
    if (!enabled_ || desc_A.rows < 1 || desc_A.rows > limits_.all) {
        return false;
    }
    if (weight.epilogue == Epilogue::kGatedSilu && desc_A.rows > limits_.gated) {
        return false;
    }
    // Plain dense rows: no MoE gather, no groups, no quantisation, no packed (tiled) weight.
    if (desc_A.idxs || desc_A.offsets || desc_A.num > 1 || k.num > 1 || k.pack || weight.scales) {
        return false;
    }
    if (!W || !IsHalfType(W.dtype()) || input.dtype() != W.dtype() || desc_A.type != W.dtype()) {
        return false;
    }
    if (weight.epilogue != Epilogue::kNone && weight.epilogue != Epilogue::kGatedSilu) {
        return false;
    }
    const DataType out = output.dtype();
    if (weight.epilogue == Epilogue::kGatedSilu ? !IsHalfType(out) : !(IsHalfType(out) || out == kFloat)) {
        return false;
    }
    if (weight.epilogue == Epilogue::kGatedSilu && weight.output_dim % (2 * kGateUpBlock) != 0) {
        return false;
    }
    if (k.rows != desc_A.cols || k.cols != weight.output_dim) {
        return false;
    }
    return Aligned(input.raw_data()) && Aligned(W.raw_data()) && Aligned(output.raw_data())
           && byte_size(W.dtype(), k.ld) % kAlignment == 0 && byte_size(input.dtype(), desc_A.ld) % kAlignment == 0;
}

const DecodeGemm::Plan& DecodeGemm::GetPlan(const Key& key)
{
    auto it = plans_.find(key);
    if (it != plans_.end()) {
        return it->second;
    }
    const auto [m, n, k, w_col_major, ldw, ldx, ldc, in_type, out_type] = key;
    const cudaDataType in_dt  = to_cuda_dtype(static_cast<DataType>(in_type));
    const cudaDataType out_dt = to_cuda_dtype(static_cast<DataType>(out_type));

    // Column-major view: C[n, m] = op(W) [n, k] * X[k, m]. A weight stored (N, K) with K contiguous
    // (TurboMind's sm90 layout, "column-major K x N") is op = T of a k x n matrix; one stored row-major
    // K x N (the output head) is op = N of an n x k matrix.
    Plan                    plan;
    const cublasOperation_t op_w = w_col_major ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_x = CUBLAS_OP_N;
    CheckLt(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_w, sizeof(op_w));
    cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_x, sizeof(op_x));
    CheckLt(w_col_major ? cublasLtMatrixLayoutCreate(&plan.w, in_dt, k, n, ldw) :
                          cublasLtMatrixLayoutCreate(&plan.w, in_dt, n, k, ldw),
            "cublasLtMatrixLayoutCreate");
    CheckLt(cublasLtMatrixLayoutCreate(&plan.x, in_dt, k, m, ldx), "cublasLtMatrixLayoutCreate");
    CheckLt(cublasLtMatrixLayoutCreate(&plan.c, out_dt, n, m, ldc), "cublasLtMatrixLayoutCreate");

    cublasLtMatmulPreference_t pref{};
    cublasLtMatmulPreferenceCreate(&pref);
    const uint64_t workspace = kWorkspaceBytes;
    const uint32_t alignment = kAlignment;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
        cublasLtMatmulPreferenceSetAttribute(pref, attr, &alignment, sizeof(alignment));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int                             found = 0;
    const cublasStatus_t            status =
        cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.w, plan.x, plan.c, plan.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    plan.valid = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (plan.valid) {
        plan.algo = result.algo;
    }
    else {
        TM_LOG_WARNING("cosyfast decode GEMM: no cuBLASLt algorithm for m={} n={} k={}; TurboMind's GEMM runs it", m, n, k);
    }
    return plans_.emplace(key, plan).first->second;
}

bool DecodeGemm::Forward(const Tensor&             input,
                         const gemm::MatrixLayout& desc_A,
                         const LinearWeight&       weight,
                         Tensor&                   output,
                         const gemm::MatrixLayout& desc_D,
                         cudaStream_t              stream)
{
    if (!enabled_) {
        return false;  // engines loaded with fast_decode off are TurboMind as shipped: not counted
    }
    if (!Takes(input, desc_A, weight, output)) {
        g_left.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    const bool gated = weight.epilogue == Epilogue::kGatedSilu;
    const int  m     = desc_A.rows;
    const int  n     = weight.output_dim;
    const int  k     = desc_A.cols;
    const auto& kd   = weight.k_desc;

    // The fused gate/up GEMM accumulates into fp32 scratch, then applies the SiLU.
    Tensor      acc;
    void*       c_ptr = output.raw_data();
    int         ldc   = desc_D.ld;
    DataType    c_type = output.dtype();
    if (gated) {
        acc    = Tensor{{m, n}, kFloat, kDEVICE};
        c_ptr  = acc.raw_data();
        ldc    = n;
        c_type = kFloat;
    }
    const Key   key{m, n, k, kd.order == gemm::kColMajor, kd.ld, desc_A.ld, ldc, (int)input.dtype(), (int)c_type};
    const Plan& plan = GetPlan(key);
    if (!plan.valid) {
        g_left.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    const float          alpha = 1.f, beta = 0.f;
    const cublasStatus_t status = cublasLtMatmul(handle_,
                                                 plan.op,
                                                 &alpha,
                                                 weight.weight.raw_data(),
                                                 plan.w,
                                                 input.raw_data(),
                                                 plan.x,
                                                 &beta,
                                                 c_ptr,
                                                 plan.c,
                                                 c_ptr,
                                                 plan.c,
                                                 &plan.algo,
                                                 workspace_,
                                                 kWorkspaceBytes,
                                                 stream);
    if (status != CUBLAS_STATUS_SUCCESS) {
        // Nothing was written: TurboMind's own GEMM runs this one.
        CheckLt(status, "cublasLtMatmul");
        g_left.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    if (gated) {
        const int inter   = n / 2;
        const int threads = 256;
        const int blocks  = (int)std::min<int64_t>(((int64_t)m * inter + threads - 1) / threads, 4096);
        if (output.dtype() == kBfloat16) {
            GatedSiluKernel<<<blocks, threads, 0, stream>>>(
                (__nv_bfloat16*)output.raw_data(), desc_D.ld, (const float*)c_ptr, ldc, m, inter);
        }
        else {
            GatedSiluKernel<<<blocks, threads, 0, stream>>>(
                (half*)output.raw_data(), desc_D.ld, (const float*)c_ptr, ldc, m, inter);
        }
    }
    g_taken.fetch_add(1, std::memory_order_relaxed);
    return true;
}

}  // namespace turbomind::cosyfast
