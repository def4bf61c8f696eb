// cosyfast: a request's CosyVoice sampling options, carried by turbomind::GenerationConfig.
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/generation/ at
// configure time. The steps they drive are listed in cosyvoice_sampling_kernel.h.
#pragma once

#include <memory>
#include <vector>

namespace turbomind {

// Tokens decoded before a request that its RAS window may reach (bistream's earlier pieces).
constexpr int kCosyVoiceMaxHistory = 32;

struct CosyVoiceConfig {
    bool enabled = false;  // off: TurboMind's own sampler (top_k/top_p/...) draws the request
    int  decoder_rows = 0;                // logits rows that are tokens; the rest are padding
    int  stop_begin = 0, stop_end = 0;    // a drawn id in [stop_begin, stop_end) ends the request
    int  mask_begin = 0, mask_end = 0;    // ids masked while fewer than min_len tokens are out ...
    int  mask_keep    = -1;               // ... except this one (bistream's fill token)
    int  min_len      = 0;
    int  forced_index = -1;               // the forced_index-th new token is forced_token, no draw
    int  forced_token = -1;
    bool ras              = false;
    int  win_size         = 10;
    int  ras_min_repeats  = 1;            // re-draw when the window holds the token this often
    bool exclude_repeated = true;
    std::vector<int> history;             // tokens decoded before this request, oldest first
    // The decoder bias over decoder_rows, added in float32; null for none. One engine serves one
    // model, so every request of an engine shares one bias.
    std::shared_ptr<const std::vector<float>> bias;
};

}  // namespace turbomind
