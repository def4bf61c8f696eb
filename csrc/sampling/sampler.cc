#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace cosyfast {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(score - max) in double; returns their sum. Throws when nothing is finite.
double ExpWeights(std::span<const float> scores, std::vector<double>& w) {
  float mx = kNegInf;
  for (float s : scores) mx = std::max(mx, s);
  if (!(mx > kNegInf)) throw std::runtime_error("every score is -inf or NaN: nothing can be sampled");
  w.resize(scores.size());
  double total = 0.0;
  for (size_t i = 0; i < scores.size(); ++i) {
    w[i] = std::exp(static_cast<double>(scores[i]) - mx);  // exp(-inf) = 0
    total += w[i];
  }
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

}  // namespace

int NucleusSample(std::span<const float> scores, double top_p, int top_k, Rng& rng) {
  std::vector<double> w;
  const double total = ExpWeights(scores, w);
  const size_t k = std::min<size_t>(static_cast<size_t>(top_k), scores.size());
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  // Descending probability, ties by lower index: the order of a stable descending sort.
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int a, int b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  double cum = 0.0, kept_mass = 0.0;
  size_t kept = 0;
  while (kept < k && cum < top_p) {
    cum += w[order[kept]] / total;
    kept_mass += w[order[kept]];
    ++kept;
  }
  return DrawIndex(w, [&](size_t i) { return order[i]; }, kept, kept_mass, rng.Uniform());
}

int RandomSample(std::span<const float> scores, Rng& rng) {
  std::vector<double> w;
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

void TokenSampler::Process(const float* logits, bool ignore_eos, std::vector<float>& scores) const {
  scores.resize(engine_vocab_);
  const int rows = vocab_.decoder_rows;
  for (int i = 0; i < rows; ++i) scores[i] = logits[i];
  if (!bias_.empty()) {
    for (int i = 0; i < rows; ++i) scores[i] += bias_[i];
  }
  std::fill(scores.begin() + rows, scores.end(), kNegInf);
  if (ignore_eos) {
    for (int id : vocab_.stop_ids) scores[id] = kNegInf;
  }
}

int TokenSampler::Sample(const float* logits, bool ignore_eos, std::span<const int32_t> decoded,
                         const SamplingOptions& options, Rng& rng, std::vector<float>& scratch) const {
  Process(logits, ignore_eos, scratch);
  return RasSample(scratch, decoded, options, rng);
}

}  // namespace cosyfast
