#include "sampling/sampler.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <stdexcept>

namespace cosyfast {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 in single precision, from IEEE arithmetic alone (no libm): the weights are
// then the same on every platform and standard library, and the loop vectorises. Range
// reduction x = k ln2 + r (|r| <= ln2/2, ln2 split in two so k ln2 is exact), e^r by its Taylor
// series to r^7 (truncation < 6e-9, under float rounding), 2^k put into the exponent bits.
// x < -87 (weights under ~1e-38, nothing a draw can reach) and -inf give 0. The loop over a
// row vectorises only with -fno-trapping-math (set for this file in CMakeLists.txt).
inline float ExpNonPositive(float x) {
  constexpr float kLog2e = 1.44269504f;
  constexpr float kLn2Hi = 0.693145751953125f;  // few mantissa bits: k * kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860677e-06f;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = std::max(x, -87.0f);
  const float kd = xc * kLog2e + kShifter;
  const float k = kd - kShifter;
  const float r = (xc - k * kLn2Hi) - k * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t ki = std::bit_cast<int32_t>(kd) - std::bit_cast<int32_t>(kShifter);  // k in [-126, 0]
  const float scale = std::bit_cast<float>((ki + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// Eight interleaved partial results, combined in a fixed order: the same answer every run,
// and independent chains the compiler can vectorise (a single running max or sum cannot be
// reordered without changing its rounding, so it would stay scalar).
constexpr size_t kLanes = 8;

float MaxScore(std::span<const float> scores) {
  float lane[kLanes];
  std::fill(lane, lane + kLanes, kNegInf);
  const size_t n = scores.size(), body = n - n % kLanes;
  for (size_t i = 0; i < body; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) lane[j] = scores[i + j] > lane[j] ? scores[i + j] : lane[j];
  }
  float mx = kNegInf;
  for (size_t j = 0; j < kLanes; ++j) mx = std::max(mx, lane[j]);
  for (size_t i = body; i < n; ++i) mx = std::max(mx, scores[i]);
  return mx;
}

// Per-thread scratch for the weights: a draw allocates nothing (it runs once per token for
// every session).
std::vector<float>& WeightScratch() {
  thread_local std::vector<float> w;
  return w;
}

// w = exp(score - max) in float (softmax numerators, as CosyVoice's float32 softmax); returns
// their sum in double. Throws when nothing is finite.
double ExpWeights(std::span<const float> scores, std::vector<float>& w) {
  const float mx = MaxScore(scores);
  if (!(mx > kNegInf)) throw std::runtime_error("every score is -inf or NaN: nothing can be sampled");
  // exp(inf - inf) is NaN: an overflowed logit would otherwise turn the draw silently greedy.
  if (mx == -kNegInf) throw std::runtime_error("a score is +inf: the model's weights overflow float32");
  const size_t n = scores.size(), body = n - n % kLanes;
  w.resize(n);
  for (size_t i = 0; i < n; ++i) w[i] = ExpNonPositive(scores[i] - mx);
  double lane[kLanes] = {};
  for (size_t i = 0; i < body; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) lane[j] += w[i + j];
  }
  double total = 0.0;
  for (size_t j = 0; j < kLanes; ++j) total += lane[j];
  for (size_t i = body; i < n; ++i) total += w[i];
  return total;
}

// Index of the first weight whose running sum passes u * total (u in [0, 1)).
template <typename Weights, typename Index>
int DrawIndex(const Weights& w, const Index& index, size_t n, double total, double u) {
  const double target = u * total;
  double acc = 0.0;
  int last_positive = -1;
  for (size_t i = 0; i < n; ++i) {
    const double wi = w[index(i)];
    if (wi <= 0.0) continue;
    acc += wi;
    last_positive = index(i);
    if (target < acc) return index(i);
  }
  return last_positive;  // rounding at the very top of the range
}

// The k heaviest indices, heaviest first, ties by lower index (the order of a stable descending
// sort), in one pass: an index enters the short sorted list only if it beats its last entry,
// which for a peaked or flat row of ~6.6k scores and k = 25 is rare after the first few hundred.
size_t TopK(const std::vector<float>& w, size_t k, int* out) {
  if (k == 0) return 0;
  size_t n = 0;
  float floor = 0.0f;  // the weight of the last entry once the list is full
  for (size_t i = 0; i < w.size(); ++i) {
    const float wi = w[i];
    if (n == k && !(wi > floor)) continue;  // equal weight: the lower index already won
    size_t pos = n < k ? n++ : k - 1;
    while (pos > 0 && wi > w[out[pos - 1]]) {
      out[pos] = out[pos - 1];
      --pos;
    }
    out[pos] = static_cast<int>(i);
    if (n == k) floor = w[out[k - 1]];
  }
  return n;
}

}  // namespace

int NucleusSample(std::span<const float> scores, double top_p, int top_k, Rng& rng) {
  std::vector<float>& w = WeightScratch();
  const double total = ExpWeights(scores, w);
  constexpr size_t kStackK = 64;
  const size_t k = std::min<size_t>(static_cast<size_t>(top_k), scores.size());
  int stack_order[kStackK];
  std::vector<int> heap_order;
  int* order = stack_order;
  if (k > kStackK) {
    heap_order.resize(k);
    order = heap_order.data();
  }
  const size_t found = TopK(w, k, order);
  double cum = 0.0, kept_mass = 0.0;
  size_t kept = 0;
  while (kept < found && cum < top_p) {
    cum += static_cast<double>(w[order[kept]]) / total;
    kept_mass += w[order[kept]];
    ++kept;
  }
  return DrawIndex(w, [&](size_t i) { return order[i]; }, kept, kept_mass, rng.Uniform());
}

int RandomSample(std::span<const float> scores, Rng& rng) {
  std::vector<float>& w = WeightScratch();
  const double total = ExpWeights(scores, w);
  return DrawIndex(w, [](size_t i) { return static_cast<int>(i); }, w.size(), total, rng.Uniform());
}

int RasSample(std::span<float> scores, std::span<const int32_t> decoded, const SamplingOptions& options, Rng& rng) {
  const int token = NucleusSample(scores, options.top_p, options.top_k, rng);
  if (!options.ras) return token;
  const size_t window = std::min<size_t>(static_cast<size_t>(options.win_size), decoded.size());
  const auto recent = decoded.subspan(decoded.size() - window);
  const auto rep = std::count(recent.begin(), recent.end(), token);
  if (static_cast<double>(rep) < options.win_size * options.tau_r) return token;
  if (options.exclude_repeated) {
    scores[token] = kNegInf;
    // Upstream would fail on an all -inf softmax; keep the nucleus token instead.
    if (std::none_of(scores.begin(), scores.end(), [](float s) { return s > kNegInf; })) return token;
  }
  return RandomSample(scores, rng);
}

TokenSampler::TokenSampler(SpeechVocab vocab, std::vector<float> decoder_bias, int engine_vocab)
    : vocab_(std::move(vocab)), bias_(std::move(decoder_bias)), engine_vocab_(engine_vocab) {
  vocab_.Validate();
  if (engine_vocab_ < vocab_.decoder_rows) {
    throw std::invalid_argument("the engine's vocabulary (" + std::to_string(engine_vocab_) +
                                ") is smaller than the decoder's " + std::to_string(vocab_.decoder_rows) + " rows");
  }
  if (!bias_.empty() && static_cast<int>(bias_.size()) != vocab_.decoder_rows) {
    throw std::invalid_argument("the decoder bias has " + std::to_string(bias_.size()) + " values, expected " +
                                std::to_string(vocab_.decoder_rows));
  }
}

void TokenSampler::Process(const float* logits, StopMask mask, std::vector<float>& scores) const {
  scores.resize(engine_vocab_);
  const int rows = vocab_.decoder_rows;
  for (int i = 0; i < rows; ++i) scores[i] = logits[i];
  if (!bias_.empty()) {
    for (int i = 0; i < rows; ++i) scores[i] += bias_[i];
  }
  std::fill(scores.begin() + rows, scores.end(), kNegInf);
  if (mask != StopMask::kNone) {
    for (int id : vocab_.stop_ids) {
      if (mask == StopMask::kAll || id != vocab_.fill_token) scores[id] = kNegInf;
    }
  }
}

int TokenSampler::Sample(const float* logits, StopMask mask, std::span<const int32_t> decoded,
                         const SamplingOptions& options, Rng& rng, std::vector<float>& scratch) const {
  Process(logits, mask, scratch);
  return RasSample(scratch, decoded, options, rng);
}

}  // namespace cosyfast
