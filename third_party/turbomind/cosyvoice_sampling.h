// cosyfast: the generation-loop module that runs CosyVoice's sampling (bias, masks, nucleus,
// RAS, stops by id range) for the requests that ask for it (GenerationConfig::cosyvoice).
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/generation/.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "src/turbomind/core/core.h"
#include "src/turbomind/generation/base_param.h"

namespace turbomind {

class CosyVoiceSampling: public BaseGenerationParam {
public:
    CosyVoiceSampling(const BaseGenerationParam& base, int phases);

    // Gathers the generating rows' options (the same rows, in the same order, as Sampling).
    void Setup(int phase, TensorMap& env);

    // Draws every row that asked for CosyVoice's sampling. Returns false when none did: the
    // caller then runs the native sampler. In a batch that mixes both, `native` runs first on a
    // copy of the logits (it sorts them in place) and this overwrites the CosyVoice rows.
    bool Forward(int phase, TensorMap& env, const std::function<void()>& native);

private:
    struct Data {
        Buffer_<uint8_t> rows;  // CosyVoiceRow[generation_size], device
        int              generation_size = 0;
        int              enabled         = 0;
        int              max_rows        = 0;
    };
    std::vector<Data> data_;
    Buffer_<uint8_t>  rows_buf_;  // pinned staging for Data::rows
    Buffer_<float>    bias_;      // device
    Buffer_<float>    bias_buf_;  // pinned staging
    std::shared_ptr<const std::vector<float>> bias_source_;
};

}  // namespace turbomind
