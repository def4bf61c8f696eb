// cosyfast: CosyVoice's sampling as one CUDA kernel, for TurboMind's generation loop.
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/generation/ at
// configure time (see cosyfast's third_party/README.md). It depends on CUDA and curand only.
//
// One block per generating row. The order of every step, as cosyfast's C++ sampler
// (csrc/sampling/sampler.h) and CosyVoice's Qwen2LM loop apply them:
//   1. scores[i] = logits[i] + bias[i] in float32, for i < decoder_rows; other rows (engine
//      padding) are -inf;
//   2. while fewer than min_len tokens are out: ids in [mask_begin, mask_end) -> -inf, except
//      mask_keep (bistream's fill token);
//   3. if this request's forced_index-th token is due: it is forced_token, with no draw;
//   4. w = exp(scores - max) (softmax numerators, temperature 1);
//   5. nucleus: take the heaviest tokens (ties to the lower id) while the mass taken before
//      them is < top_p and fewer than top_k are taken; draw one in proportion to its weight
//      (one uniform);
//   6. RAS: count the drawn token in the last win_size tokens of (history ++ generated); if the
//      count >= ras_min_repeats, draw again from all of w (one uniform), the drawn token
//      excluded when exclude_repeated (kept when nothing else has weight);
//   7. write the token (and advance the row's length when asked); a token in
//      [stop_begin, stop_end) finishes the row.
// Uniforms come from the row's own curand state in that order. The draws walk the candidates
// in id order rather than weight order: the same distribution as the host sampler, its own draws.
#pragma once

#include <cuda_runtime.h>
#include <curand_kernel.h>

#include "src/turbomind/generation/cosyvoice_config.h"  // kCosyVoiceMaxHistory

namespace turbomind {

// One generating row's options, laid out for a host -> device copy.
struct CosyVoiceRow {
    int   enabled;  // 0: the row uses TurboMind's own sampler
    int   decoder_rows;
    int   stop_begin, stop_end;
    int   mask_begin, mask_end, mask_keep;
    int   min_len;
    int   forced_index, forced_token;
    int   top_k;
    float top_p;
    int   ras, win_size, ras_min_repeats, exclude_repeated;
    int   prompt_len;  // first generated position in the row's token history
    int   has_bias;
    int   history_len;
    int   history[kCosyVoiceMaxHistory];  // oldest first
};

struct CosyVoiceSamplingParams {
    const float*        logits;  // [rows, stride] float32
    int                 stride;
    const float*        bias;    // [stride] float32 (rows whose has_bias is 0 ignore it)
    const CosyVoiceRow* rows;
    int**               token_ids_ptrs;   // per row: its token history
    int*                sequence_length;  // per row: tokens in the history
    curandState_t*      curand_states;
    const int*          curand_state_indices;
    int*                output_ids;
    bool*               finished;
    int                 batch_size;
    // false when the native sampler ran first on this batch (a mixed batch): it has advanced
    // sequence_length already, so the kernel reads one less and leaves it.
    bool advance_length;
};

// Largest decoder_rows the kernel holds in shared memory.
constexpr int kCosyVoiceMaxVocab = 16384;

void invokeCosyVoiceSampling(const CosyVoiceSamplingParams& params, int max_decoder_rows, cudaStream_t stream);

}  // namespace turbomind
