// Turns one raw logits row into one token, exactly as CosyVoice's Qwen2LM/CosyVoice3LM loop does.
//
// The order of every step applied to a logits row (engine output, width = engine vocab):
//   1. scores[i] = logits[i] + decoder_bias[i]     (CV2's llm_decoder bias; CV3 has none)
//   2. rows >= decoder_rows (engine padding)       -> -inf
//   3. the stop mask the caller asks for (StopMask): kAll while step < min_len (ignore_eos):
//      every stop id -> -inf (upstream masks eos only, or re-draws until the token <
//      speech_token_size; masking every stop id gives the distribution of the re-draw rule; a
//      documented choice); kAllButFill in bistream's text phase: every stop id but the fill token
//   4. temperature 1: probabilities = softmax(scores) (log_softmax first changes nothing), in
//      float32 as upstream's, through an exp of our own so that they are the same on every
//      platform; sums in double
//   5. nucleus: sort descending (stable); keep tokens while the mass before them < top_p and
//      fewer than top_k are kept; draw one in proportion to its probability (1 uniform)
//   6. RAS (if on): rep = occurrences of that token in the last win_size decoded tokens; if
//      rep >= win_size * tau_r, draw from softmax(scores) over all tokens (1 uniform), the repeated
//      token excluded under the current rule (exclude_repeated) or included under the old one.
// Uniforms come from the session's Rng in that fixed order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/options.h"
#include "core/tables.h"
#include "sampling/rng.h"

namespace cosyfast {

// Nucleus over `scores` (raw scores; softmax taken here). Returns the token index.
int NucleusSample(std::span<const float> scores, double top_p, int top_k, Rng& rng);

// Draws from softmax(scores) over every finite score.
int RandomSample(std::span<const float> scores, Rng& rng);

// CosyVoice's ras_sampling. `scores` may be modified (the repeated token set to -inf).
int RasSample(std::span<float> scores, std::span<const int32_t> decoded, const SamplingOptions& options, Rng& rng);

// Which stop ids step 3 masks.
enum class StopMask {
  kNone,        // every stop id drawable
  kAll,         // CosyVoice's ignore_eos (step < min_len)
  kAllButFill,  // bistream's text phase: the fill token stays drawable (it asks for text)
};

// Steps 1-6 above for one model. Immutable after construction, so one instance serves every
// session and thread; the caller owns the scratch row.
class TokenSampler {
 public:
  // `decoder_bias`: decoder_rows values, or empty when the decoder has none.
  TokenSampler(SpeechVocab vocab, std::vector<float> decoder_bias, int engine_vocab);

  // Returns the token id (possibly a stop id). `decoded`: the RAS window's source, oldest first.
  int Sample(const float* logits, StopMask mask, std::span<const int32_t> decoded, const SamplingOptions& options,
             Rng& rng, std::vector<float>& scratch) const;

  // Steps 1-3 only, into `scores` (resized to engine_vocab).
  void Process(const float* logits, StopMask mask, std::vector<float>& scores) const;

  const SpeechVocab& vocab() const { return vocab_; }
  int engine_vocab() const { return engine_vocab_; }

 private:
  SpeechVocab vocab_;
  std::vector<float> bias_;
  int engine_vocab_;
};

}  // namespace cosyfast
