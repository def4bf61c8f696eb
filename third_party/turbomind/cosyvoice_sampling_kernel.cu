// cosyfast: CosyVoice's sampling kernel (the steps are listed in cosyvoice_sampling_kernel.h).
#include "src/turbomind/generation/cosyvoice_sampling_kernel.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace turbomind {
namespace {

constexpr int      kThreads = 256;
constexpr int      kWarps   = kThreads / 32;
constexpr unsigned kAll     = 0xffffffffu;

// The heavier candidate; equal weights go to the lower id; id < 0 is "none".
struct Candidate {
    float w;
    int   id;
};

__device__ __forceinline__ Candidate Heavier(Candidate a, Candidate b)
{
    if (b.id < 0) {
        return a;
    }
    if (a.id < 0 || b.w > a.w || (b.w == a.w && b.id < a.id)) {
        return b;
    }
    return a;
}

// Block-wide reductions over kThreads threads. Each starts with a barrier so that the shared
// scratch of the previous one has been read by every thread.
struct Scratch {
    float     f[kWarps];
    int       i[kWarps];
    Candidate c[kWarps];
    float     scan[kThreads + 1];  // exclusive prefix sums of the draw's chunk sums
    int       token;
    float     uniform;
};

__device__ float BlockMax(float v, Scratch& s)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(kAll, v, o));
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        s.f[threadIdx.x / 32] = v;
    }
    __syncthreads();
    float r = s.f[0];
    for (int j = 1; j < kWarps; ++j) {
        r = fmaxf(r, s.f[j]);
    }
    return r;
}

__device__ float BlockSum(float v, Scratch& s)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(kAll, v, o);
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        s.f[threadIdx.x / 32] = v;
    }
    __syncthreads();
    float r = 0.f;
    for (int j = 0; j < kWarps; ++j) {  // a fixed order: every thread gets the same sum
        r += s.f[j];
    }
    return r;
}

__device__ int BlockSumInt(int v, Scratch& s)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(kAll, v, o);
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        s.i[threadIdx.x / 32] = v;
    }
    __syncthreads();
    int r = 0;
    for (int j = 0; j < kWarps; ++j) {
        r += s.i[j];
    }
    return r;
}

__device__ int BlockMaxInt(int v, Scratch& s)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = max(v, __shfl_xor_sync(kAll, v, o));
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        s.i[threadIdx.x / 32] = v;
    }
    __syncthreads();
    int r = s.i[0];
    for (int j = 1; j < kWarps; ++j) {
        r = max(r, s.i[j]);
    }
    return r;
}

__device__ Candidate BlockHeaviest(Candidate v, Scratch& s)
{
    for (int o = 16; o > 0; o >>= 1) {
        Candidate u{__shfl_xor_sync(kAll, v.w, o), __shfl_xor_sync(kAll, v.id, o)};
        v = Heavier(v, u);
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        s.c[threadIdx.x / 32] = v;
    }
    __syncthreads();
    Candidate r = s.c[0];
    for (int j = 1; j < kWarps; ++j) {
        r = Heavier(r, s.c[j]);
    }
    return r;
}

// s.scan[t] = sum of v over threads < t, s.scan[kThreads] = the total.
__device__ void BlockExclusiveScan(float v, Scratch& s)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float     x = v;
    for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(kAll, x, o);
        if (lane >= o) {
            x += y;
        }
    }
    __syncthreads();
    if (lane == 31) {
        s.f[warp] = x;
    }
    __syncthreads();
    float base = 0.f;
    for (int j = 0; j < warp; ++j) {
        base += s.f[j];
    }
    s.scan[threadIdx.x + 1] = base + x;
    if (threadIdx.x == 0) {
        s.scan[0] = 0.f;
    }
    __syncthreads();
}

// The nucleus marks a taken token by negating its (positive) weight.
__device__ __forceinline__ float DrawWeight(float w, bool taken_only)
{
    return taken_only ? (w < 0.f ? -w : 0.f) : (w > 0.f ? w : 0.f);
}

// Draws an id in proportion to its weight, with uniform u in (0, 1]. Each thread owns one
// contiguous chunk of ids; the chunk sums' prefix sums tile [0, total) exactly, so one thread
// finds the target. Returns -1 when nothing has weight.
__device__ int Draw(const float* w, int n, float u, bool taken_only, Scratch& s)
{
    const int chunk = (n + kThreads - 1) / kThreads;
    const int begin = min(n, (int)threadIdx.x * chunk), end = min(n, begin + chunk);
    float     part  = 0.f;
    int       last  = -1;
    for (int i = begin; i < end; ++i) {
        const float c = DrawWeight(w[i], taken_only);
        if (c > 0.f) {
            part += c;
            last = i;
        }
    }
    BlockExclusiveScan(part, s);
    const float total  = s.scan[kThreads];
    const float target = u * total;
    if (threadIdx.x == 0) {
        s.token = -1;
    }
    __syncthreads();
    if (last >= 0 && target >= s.scan[threadIdx.x] && target < s.scan[threadIdx.x + 1]) {
        float acc = s.scan[threadIdx.x];
        int   hit = last;  // rounding at the top of the chunk
        for (int i = begin; i < end; ++i) {
            const float c = DrawWeight(w[i], taken_only);
            if (c > 0.f) {
                acc += c;
                if (target < acc) {
                    hit = i;
                    break;
                }
            }
        }
        s.token = hit;
    }
    __syncthreads();
    if (s.token >= 0) {
        return s.token;
    }
    // target >= total: u == 1, or rounding at the very top: the last id with weight.
    return BlockMaxInt(last, s);
}

// How often the drawn token occurs in the last win_size tokens of (history ++ generated).
__device__ int RepeatsInWindow(const CosyVoiceRow& row, const int* tokens, int seq, int generated, int token, Scratch& s)
{
    int count = 0;
    for (int back = threadIdx.x; back < row.win_size; back += kThreads) {  // 0: the latest token
        int t = -1;
        if (back < generated) {
            t = tokens[seq - 1 - back];
        }
        else if (back - generated < row.history_len) {
            t = row.history[row.history_len - 1 - (back - generated)];
        }
        count += t == token;
    }
    return BlockSumInt(count, s);
}

__device__ float UniformOf(curandState_t* states, int index, Scratch& s)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        curandState_t state = states[index];
        s.uniform           = curand_uniform(&state);  // (0, 1]
        states[index]       = state;
    }
    __syncthreads();
    return s.uniform;
}

__global__ void __launch_bounds__(kThreads) CosyVoiceSamplingKernel(CosyVoiceSamplingParams p)
{
    extern __shared__ float w[];  // one row of scores, then weights
    __shared__ Scratch s;

    const int           g   = blockIdx.x;
    const CosyVoiceRow& row = p.rows[g];
    if (!row.enabled) {
        return;  // TurboMind's own sampler drew this row
    }
    const int  n         = row.decoder_rows;
    const int  seq       = p.sequence_length[g] - (p.advance_length ? 0 : 1);
    const int  generated = seq - row.prompt_len;
    const int* tokens    = p.token_ids_ptrs[g];

    int token = -1;
    if (row.forced_index >= 0 && generated == row.forced_index) {
        token = row.forced_token;
    }
    else {
        // 1-2: scores with the bias and the masks
        const bool   masking = generated < row.min_len;
        const float* logits  = p.logits + (size_t)g * p.stride;
        float        top     = -INFINITY;
        for (int i = threadIdx.x; i < n; i += kThreads) {
            float x = logits[i];
            if (row.has_bias) {
                x += p.bias[i];
            }
            if (masking && i >= row.mask_begin && i < row.mask_end && i != row.mask_keep) {
                x = -INFINITY;
            }
            w[i] = x;
            top  = fmaxf(top, x);
        }
        top = BlockMax(top, s);
        if (!(top > -INFINITY)) {
            token = row.stop_begin;  // nothing can be drawn (NaN logits): end the row on a stop id
        }
        else {
            // 4: softmax numerators
            float part = 0.f;
            for (int i = threadIdx.x; i < n; i += kThreads) {
                const float e = w[i] > -INFINITY ? expf(w[i] - top) : 0.f;
                w[i]          = e;
                part += e;
            }
            const float total = BlockSum(part, s);
            // 5: the nucleus, heaviest first
            const int k     = row.top_k > 0 ? min(row.top_k, n) : n;
            float     taken = 0.f;
            for (int kept = 0; kept < k && taken < row.top_p; ++kept) {
                Candidate best{0.f, -1};
                for (int i = threadIdx.x; i < n; i += kThreads) {
                    if (w[i] > 0.f && (best.id < 0 || w[i] > best.w)) {  // ascending ids: ties keep the lower
                        best = {w[i], i};
                    }
                }
                best = BlockHeaviest(best, s);
                if (best.id < 0) {
                    break;
                }
                if (threadIdx.x == 0) {
                    w[best.id] = -best.w;
                }
                __syncthreads();  // the next scan must see it taken
                taken += best.w / total;
            }
            token = Draw(w, n, UniformOf(p.curand_states, p.curand_state_indices[g], s), true, s);
            // 6: repetition-aware re-draw
            if (row.ras && RepeatsInWindow(row, tokens, seq, generated, token, s) >= row.ras_min_repeats) {
                for (int i = threadIdx.x; i < n; i += kThreads) {
                    w[i] = (row.exclude_repeated && i == token) ? 0.f : fabsf(w[i]);
                }
                const int redraw = Draw(w, n, UniformOf(p.curand_states, p.curand_state_indices[g], s), false, s);
                if (redraw >= 0) {
                    token = redraw;
                }
            }
        }
    }
    // 7
    if (threadIdx.x == 0) {
        p.output_ids[g] = token;
        if (p.advance_length) {
            p.sequence_length[g] = seq + 1;
        }
        if (token >= row.stop_begin && token < row.stop_end) {
            p.finished[g] = true;
        }
    }
}

}  // namespace

void invokeCosyVoiceSampling(const CosyVoiceSamplingParams& params, int max_decoder_rows, cudaStream_t stream)
{
    if (params.batch_size <= 0) {
        return;
    }
    if (max_decoder_rows <= 0 || max_decoder_rows > kCosyVoiceMaxVocab) {
        throw std::invalid_argument("CosyVoice sampling: decoder_rows " + std::to_string(max_decoder_rows)
                                    + " is outside [1, " + std::to_string(kCosyVoiceMaxVocab) + "]");
    }
    const size_t smem = sizeof(float) * (size_t)max_decoder_rows;
    // More than the default 48 KB of dynamic shared memory must be asked for once.
    static const cudaError_t opted_in = cudaFuncSetAttribute(
        CosyVoiceSamplingKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(sizeof(float) * kCosyVoiceMaxVocab));
    (void)opted_in;
    CosyVoiceSamplingKernel<<<params.batch_size, kThreads, smem, stream>>>(params);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        throw std::runtime_error(std::string("CosyVoice sampling kernel: ") + cudaGetErrorString(err));
    }
}

}  // namespace turbomind
