#include "core/options.h"

#include <cmath>
#include <limits>

#include "core/messages.h"

namespace cosyfast {

void SamplingOptions::Validate() const {
  Require(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got " + Num(top_p));  // NaN fails too
  Require(top_k >= 1, "top_k must be >= 1, got " + std::to_string(top_k));
  if (ras) {
    Require(win_size >= 1, "win_size must be >= 1 when ras is on, got " + std::to_string(win_size));
    Require(tau_r > 0.0 && std::isfinite(tau_r), "tau_r must be a finite number > 0 when ras is on, got " + Num(tau_r));
  }
}

std::string SamplingOptions::ToString() const {
  return "SamplingOptions(top_p=" + Num(top_p) + ", top_k=" + std::to_string(top_k) + ", ras=" + Bool(ras) +
         ", win_size=" + std::to_string(win_size) + ", tau_r=" + Num(tau_r) +
         ", exclude_repeated=" + Bool(exclude_repeated) + ")";
}

void LengthOptions::Validate() const {
  Require(min_token_text_ratio >= 0.0 && std::isfinite(min_token_text_ratio),
          "min_token_text_ratio must be a finite number >= 0, got " + Num(min_token_text_ratio));
  Require(max_token_text_ratio > 0.0 && std::isfinite(max_token_text_ratio),
          "max_token_text_ratio must be a finite number > 0, got " + Num(max_token_text_ratio));
  Require(max_len_override == -1 || max_len_override > 0,
          "max_len must be > 0 (or unset), got " + std::to_string(max_len_override));
  Require(min_len_override >= -1, "min_len must be >= 0 (or unset), got " + std::to_string(min_len_override));
  // Both given and crossed: no length satisfies both (the session would stop at max_len with
  // min_len unmet), so the request is refused rather than silently cut short.
  Require(min_len_override < 0 || max_len_override < 0 || min_len_override <= max_len_override,
          "min_len must be <= max_len, got min_len=" + std::to_string(min_len_override) +
              " and max_len=" + std::to_string(max_len_override));
}

std::string LengthOptions::ToString() const {
  return "LengthOptions(min_token_text_ratio=" + Num(min_token_text_ratio) +
         ", max_token_text_ratio=" + Num(max_token_text_ratio) + ", max_len=" + std::to_string(max_len_override) +
         ", min_len=" + std::to_string(min_len_override) + ")";
}

// Python's int() truncates toward zero; so does the cast (the product is never negative). The
// clamp comes first: casting a double past INT_MAX to int is undefined behaviour.
int ScaledLen(int64_t text_len, double ratio) {
  const double len = static_cast<double>(text_len) * ratio;
  constexpr double kMax = std::numeric_limits<int>::max();
  if (!(len > 0.0)) return 0;  // NaN too (Validate refuses it; this keeps the cast defined)
  return len >= kMax ? std::numeric_limits<int>::max() : static_cast<int>(len);
}

int LengthOptions::MinLen(int text_len) const {
  if (min_len_override >= 0) return min_len_override;
  return ScaledLen(text_len, min_token_text_ratio);
}

int LengthOptions::MaxLen(int text_len) const {
  if (max_len_override > 0) return max_len_override;
  return ScaledLen(text_len, max_token_text_ratio);
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
