// cosyfast: see cosyvoice_sampling.h.
#include "src/turbomind/generation/cosyvoice_sampling.h"

#include <algorithm>
#include <cmath>

#include "src/turbomind/core/check.h"
#include "src/turbomind/core/copy.h"
#include "src/turbomind/engine/batch.h"
#include "src/turbomind/engine/request.h"
#include "src/turbomind/generation/cosyvoice_sampling_kernel.h"

namespace turbomind {

CosyVoiceSampling::CosyVoiceSampling(const BaseGenerationParam& base, int phases): BaseGenerationParam{base}
{
    const ssize_t row_bytes = (ssize_t)sizeof(CosyVoiceRow) * max_batch_size_;
    rows_buf_               = {row_bytes, kCPUpinned};
    bias_                   = {vocab_size_padded_, kDEVICE};
    bias_buf_               = {vocab_size_padded_, kCPUpinned};
    for (int i = 0; i < phases; ++i) {
        Data d;
        d.rows = {row_bytes, kDEVICE};
        data_.push_back(std::move(d));
    }
}

void CosyVoiceSampling::Setup(int phase, TensorMap& env)
{
    auto&              d    = data_.at(phase);
    auto&              copy = *env.at("copy").data<BatchCopy*>()[0];
    Buffer_<Sequence*> rc   = env.at("requests").buffer();

    auto* rows        = reinterpret_cast<CosyVoiceRow*>(rows_buf_.data());
    d.generation_size = d.enabled = d.max_rows = 0;
    for (int i = 0; i < rc.size(); ++i) {
        const Sequence& c = *rc[i];
        if (!c.generating) {
            continue;
        }
        const CosyVoiceConfig& o   = c.gen_cfg.cosyvoice;
        CosyVoiceRow&          row = rows[d.generation_size++];
        row                        = {};
        if (!o.enabled) {
            continue;
        }
        TM_CHECK_GT(o.decoder_rows, 0);
        TM_CHECK_LE(o.decoder_rows, vocab_size_);
        TM_CHECK_LE((int)o.history.size(), kCosyVoiceMaxHistory);
        if (o.bias) {
            TM_CHECK_EQ((int)o.bias->size(), o.decoder_rows);
            if (!bias_source_) {  // the first request with a bias: upload it once
                std::copy_n(o.bias->data(), o.bias->size(), bias_buf_.data());
                copy(bias_buf_.data(), (ssize_t)o.bias->size(), bias_.data());
                bias_source_ = o.bias;
            }
            TM_CHECK(o.bias == bias_source_) << "one engine samples with one decoder bias";
        }
        row.enabled          = 1;
        row.decoder_rows     = o.decoder_rows;
        row.stop_begin       = o.stop_begin;
        row.stop_end         = o.stop_end;
        row.mask_begin       = o.mask_begin;
        row.mask_end         = o.mask_end;
        row.mask_keep        = o.mask_keep;
        row.min_len          = o.min_len;
        row.forced_index     = o.forced_index;
        row.forced_token     = o.forced_token;
        row.top_k            = c.gen_cfg.top_k;
        row.top_p            = c.gen_cfg.top_p;
        row.ras              = o.ras;
        row.win_size         = o.win_size;
        row.ras_min_repeats  = o.ras_min_repeats;
        row.exclude_repeated = o.exclude_repeated;
        row.prompt_len       = c.prompt_len;
        row.has_bias         = o.bias != nullptr;
        row.history_len      = (int)o.history.size();
        std::copy(o.history.begin(), o.history.end(), row.history);
        ++d.enabled;
        d.max_rows = std::max(d.max_rows, o.decoder_rows);
    }
    if (d.enabled) {
        copy(rows_buf_.data(), (ssize_t)sizeof(CosyVoiceRow) * d.generation_size, d.rows.data());
    }
}

bool CosyVoiceSampling::Forward(int phase, TensorMap& env, const std::function<void()>& native)
{
    auto& d = data_.at(phase);
    if (d.enabled == 0) {
        return false;
    }
    Tensor_<float> logits = env.at("logits");
    TM_CHECK_EQ(logits.shape(0), d.generation_size);
    Tensor_<float> scores = logits;
    const bool     mixed  = d.enabled < d.generation_size;
    if (mixed) {
        scores = empty_like(logits);
        Copy(logits, scores);
        native();
    }
    CosyVoiceSamplingParams p{};
    p.logits               = scores.data();
    p.stride               = vocab_size_padded_;
    p.bias                 = bias_.data();
    p.rows                 = reinterpret_cast<const CosyVoiceRow*>(d.rows.data());
    p.token_ids_ptrs       = env.at("token_ids_ptrs").data<int*>();
    p.sequence_length      = env.at("sequence_length").data<int>();
    p.curand_states        = (curandState_t*)env.at("curand_state").raw_data();
    p.curand_state_indices = env.at("curand_state_indices").data<int>();
    p.output_ids           = env.at("output_ids").data<int>();
    p.finished             = env.at("finished").data<bool>();
    p.batch_size           = d.generation_size;
    p.advance_length       = !mixed;
    invokeCosyVoiceSampling(p, d.max_rows, core::Context::stream().handle());
    return true;
}

}  // namespace turbomind
