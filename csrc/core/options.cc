#include "core/options.h"

#include <sstream>
#include <stdexcept>

namespace cosyfast {
namespace {

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

void SamplingOptions::Validate() const {
  Require(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got " + std::to_string(top_p));
  Require(top_k >= 1, "top_k must be >= 1, got " + std::to_string(top_k));
  if (ras) {
    Require(win_size >= 1, "win_size must be >= 1 when ras is on, got " + std::to_string(win_size));
    Require(tau_r > 0.0, "tau_r must be > 0 when ras is on, got " + std::to_string(tau_r));
  }
}

std::string SamplingOptions::ToString() const {
  std::ostringstream s;
  s << "SamplingOptions(top_p=" << top_p << ", top_k=" << top_k << ", ras=" << (ras ? "true" : "false")
    << ", win_size=" << win_size << ", tau_r=" << tau_r
    << ", exclude_repeated=" << (exclude_repeated ? "true" : "false") << ")";
  return s.str();
}

void LengthOptions::Validate() const {
  Require(min_token_text_ratio >= 0.0,
          "min_token_text_ratio must be >= 0, got " + std::to_string(min_token_text_ratio));
  Require(max_token_text_ratio > 0.0,
          "max_token_text_ratio must be > 0, got " + std::to_string(max_token_text_ratio));
  Require(max_len_override == -1 || max_len_override > 0,
          "max_len must be > 0 (or unset), got " + std::to_string(max_len_override));
  Require(min_len_override >= -1, "min_len must be >= 0 (or unset), got " + std::to_string(min_len_override));
}

std::string LengthOptions::ToString() const {
  std::ostringstream s;
  s << "LengthOptions(min_token_text_ratio=" << min_token_text_ratio
    << ", max_token_text_ratio=" << max_token_text_ratio << ", max_len=" << max_len_override
    << ", min_len=" << min_len_override << ")";
  return s.str();
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
