// Options of one request, each struct checked in one place (Validate) that throws
// std::invalid_argument with a plain sentence naming the option and what was expected.
#pragma once

#include <cstdint>
#include <string>

namespace cosyfast {

// Longest sequence (prompt + generated) a session may reach unless the caller says otherwise:
// the default of every engine, the C API and the Python API (cosyfast._core.DEFAULTS).
inline constexpr int kDefaultMaxSessionLen = 4096;

// CosyVoice's ras_sampling(top_p, top_k, win_size, tau_r), temperature 1.
struct SamplingOptions {
  double top_p = 0.8;   // nucleus: keep tokens while the probability mass before them is < top_p
  int top_k = 25;       // ... and fewer than top_k are kept
  bool ras = true;      // repetition-aware re-draw; false = plain nucleus sampling
  int win_size = 10;    // RAS window over the tokens decoded so far (the prompt is not included)
  double tau_r = 0.1;   // re-draw when the count in the window >= win_size * tau_r
  // Current upstream rule: the repeated token is excluded from the re-draw. The older rule
  // (most ports) re-draws from the full distribution, repeated token included.
  bool exclude_repeated = true;

  void Validate() const;
  std::string ToString() const;
};

// CosyVoice's min/max_token_text_ratio: min_len = int(text_len * min_ratio), where text_len
// counts the text ids without the prompt text.
struct LengthOptions {
  double min_token_text_ratio = 2.0;
  double max_token_text_ratio = 20.0;
  int max_len_override = -1;  // > 0 replaces the computed max_len (benchmarks, tests)
  int min_len_override = -1;  // >= 0 replaces the computed min_len

  void Validate() const;
  std::string ToString() const;
  int MinLen(int text_len) const;
  int MaxLen(int text_len) const;
};

// int(text_len * ratio) as Python computes it (in double), clamped to [0, INT_MAX]: a huge but
// finite ratio means "no limit", not a float-to-int overflow.
int ScaledLen(int64_t text_len, double ratio);

struct RequestOptions {
  SamplingOptions sampling;
  LengthOptions length;
  uint64_t seed = 0;

  void Validate() const;
  std::string ToString() const;
};

}  // namespace cosyfast
