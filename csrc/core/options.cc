#include "core/options.h"

#include "core/text.h"

namespace cosyfast {

void SamplingOptions::Validate() const {
  Require(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got " + Num(top_p));
  Require(top_k >= 1, "top_k must be >= 1, got " + std::to_string(top_k));
  if (ras) {
    Require(win_size >= 1, "win_size must be >= 1 when ras is on, got " + std::to_string(win_size));
    Require(tau_r > 0.0, "tau_r must be > 0 when ras is on, got " + Num(tau_r));
  }
}

std::string SamplingOptions::ToString() const {
  return "SamplingOptions(top_p=" + Num(top_p) + ", top_k=" + std::to_string(top_k) + ", ras=" + Bool(ras) +
         ", win_size=" + std::to_string(win_size) + ", tau_r=" + Num(tau_r) +
         ", exclude_repeated=" + Bool(exclude_repeated) + ")";
}

void LengthOptions::Validate() const {
  Require(min_token_text_ratio >= 0.0,
          "min_token_text_ratio must be >= 0, got " + Num(min_token_text_ratio));
  Require(max_token_text_ratio > 0.0,
          "max_token_text_ratio must be > 0, got " + Num(max_token_text_ratio));
  Require(max_len_override == -1 || max_len_override > 0,
          "max_len must be > 0 (or unset), got " + std::to_string(max_len_override));
  Require(min_len_override >= -1, "min_len must be >= 0 (or unset), got " + std::to_string(min_len_override));
}

std::string LengthOptions::ToString() const {
  return "LengthOptions(min_token_text_ratio=" + Num(min_token_text_ratio) +
         ", max_token_text_ratio=" + Num(max_token_text_ratio) + ", max_len=" + std::to_string(max_len_override) +
         ", min_len=" + std::to_string(min_len_override) + ")";
}

// Python's int() truncates toward zero; so does the cast (the product is never negative).
int LengthOptions::MinLen(int text_len) const {
  if (min_len_override >= 0) return min_len_override;
  return static_cast<int>(text_len * min_token_text_ratio);
}

int LengthOptions::MaxLen(int text_len) const {
  if (max_len_override > 0) return max_len_override;
  return static_cast<int>(text_len * max_token_text_ratio);
}

void RequestOptions::Validate() const {
  sampling.Validate();
  length.Validate();
}

std::string RequestOptions::ToString() const {
  return "RequestOptions(" + sampling.ToString() + ", " + length.ToString() +
         ", seed=" + std::to_string(seed) + ")";
}

}  // namespace cosyfast
