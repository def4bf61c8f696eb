#include "engines/cpu_qwen2.h"

#include "core/messages.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <unordered_set>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cosyfast {
namespace {

// ---------------------------------------------------------------------------------------------
// Dense kernels
//
// Every output element y = dot(w_row, x_row) is accumulated the same way whatever tile computes
// it: four lanes over i = 0, 4, 8, ... (lane k sums the products at i + k, in order), the lanes
// added as (l0 + l1) + (l2 + l3), then the tail products in order. A tile only decides how many
// weight rows and input rows share one pass over memory, so a row's result never depends on
// which other rows happen to be computed with it. Contraction into fused multiply-adds is
// switched off in the kernel so that the compiler cannot fuse differently in different tile
// shapes (x86-64 without -march has no FMA anyway; other targets do).

using Vec4 = float __attribute__((vector_size(16)));

#if defined(__GNUC__) && !defined(__clang__)
#define COSYFAST_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#define COSYFAST_NO_FP_CONTRACT_BLOCK
#elif defined(__clang__)
#define COSYFAST_NO_FP_CONTRACT
#define COSYFAST_NO_FP_CONTRACT_BLOCK _Pragma("clang fp contract(off)")
#else
#define COSYFAST_NO_FP_CONTRACT
#define COSYFAST_NO_FP_CONTRACT_BLOCK
#endif

// y[rx * y_stride + rw] = dot(w + rw * n, x + rx * x_stride) over n floats, for RW consecutive
// weight rows (a contiguous [RW, n] block) and RX input rows. The body calls no functions
// (memcpy is a builtin) so nothing needs inlining across the differing optimisation attribute.
template <int RW, int RX>
COSYFAST_NO_FP_CONTRACT void DotTile(const float* w, const float* x, size_t x_stride, int n,
                                     float* y, size_t y_stride) {
  COSYFAST_NO_FP_CONTRACT_BLOCK
  Vec4 acc[RX][RW] = {};
  const int n4 = n & ~3;
  for (int i = 0; i < n4; i += 4) {
    Vec4 xv[RX];
    for (int rx = 0; rx < RX; ++rx) std::memcpy(&xv[rx], x + rx * x_stride + i, sizeof(Vec4));
    for (int rw = 0; rw < RW; ++rw) {
      Vec4 wv;
      std::memcpy(&wv, w + static_cast<size_t>(rw) * n + i, sizeof(Vec4));
      for (int rx = 0; rx < RX; ++rx) acc[rx][rw] += wv * xv[rx];
    }
  }
  for (int rx = 0; rx < RX; ++rx) {
    for (int rw = 0; rw < RW; ++rw) {
      const Vec4 a = acc[rx][rw];
      float sum = (a[0] + a[1]) + (a[2] + a[3]);
      for (int i = n4; i < n; ++i) sum += w[static_cast<size_t>(rw) * n + i] * x[rx * x_stride + i];
      y[rx * y_stride + rw] = sum;
    }
  }
}

float Dot(const float* a, const float* b, int n) {
  float y;
  DotTile<1, 1>(a, b, 0, n, &y, 0);
  return y;
}

// Tile shape: 4 weight rows x 2 input rows keeps 8 accumulators plus the loaded vectors within
// the 16 SSE registers; a batch-1 step runs 4 x 1, four independent accumulation chains.
constexpr int kTileWeightRows = 4;
constexpr int kTileInputRows = 2;
// Input rows processed per pass over a weight matrix: enough to reuse each weight tile many times
// in a long prefill, few enough that the rows stay in the L2 cache.
constexpr int kRowBlock = 32;
// Below this many multiply-adds a parallel region costs more than it saves: waking the other
// threads takes tens of microseconds, more than a small model's whole projection.
constexpr double kMinParallelMacs = 256 * 1024;

void DotTileAnyShape(const float* w, int weight_rows, const float* x, int input_rows, int n,
                     float* y, size_t y_stride) {
  const size_t x_stride = n;
  if (weight_rows == kTileWeightRows) {
    if (input_rows == 2) DotTile<4, 2>(w, x, x_stride, n, y, y_stride);
    else DotTile<4, 1>(w, x, x_stride, n, y, y_stride);
    return;
  }
  for (int rw = 0; rw < weight_rows; ++rw) {
    const float* w_row = w + static_cast<size_t>(rw) * n;
    if (input_rows == 2) DotTile<1, 2>(w_row, x, x_stride, n, y + rw, y_stride);
    else DotTile<1, 1>(w_row, x, x_stride, n, y + rw, y_stride);
  }
}

// One linear map of the round's rows: y[r, j] = x[r, :] . w[j, :] (+ bias[j]) for j < out, with
// w [out, in] row-major as PyTorch's Linear stores it and y [rows, out].
struct Projection {
  const float* w;
  const float* bias;  // nullptr: no bias
  int out;
  float* y;
};

int TileCount(const Projection& p) { return (p.out + kTileWeightRows - 1) / kTileWeightRows; }

// Weight tile `tile` of projection p against input rows [r0, r1).
void ProjectTile(const float* x, int r0, int r1, int in, const Projection& p, int tile) {
  const int j0 = tile * kTileWeightRows;
  const int weight_rows = std::min(kTileWeightRows, p.out - j0);
  const float* w_tile = p.w + static_cast<size_t>(j0) * in;
  for (int r = r0; r < r1; r += kTileInputRows) {
    const int input_rows = std::min(kTileInputRows, r1 - r);
    DotTileAnyShape(w_tile, weight_rows, x + static_cast<size_t>(r) * in, input_rows, in,
                    p.y + static_cast<size_t>(r) * p.out + j0, p.out);
  }
  if (p.bias != nullptr) {
    for (int r = r0; r < r1; ++r) {
      float* y_row = p.y + static_cast<size_t>(r) * p.out;
      for (int j = j0; j < j0 + weight_rows; ++j) y_row[j] += p.bias[j];
    }
  }
}

// Applies N projections of the same input x [rows, in]. Threads split the weight tiles of all N
// (q/k/v, or gate/up, together): each tile is read from memory once per row block, every output
// element is computed by one thread, and the N maps share one parallel region. Fewer regions
// means fewer barriers, which is what costs on a busy machine, where a barrier can wait for a
// descheduled thread. Tiles are handed out dynamically for the same reason; which thread
// computes a tile never changes its result.
template <size_t N>
void Project(const float* x, int rows, int in, const std::array<Projection, N>& projections) {
  std::array<int, N + 1> first_tile{};
  for (size_t p = 0; p < N; ++p) first_tile[p + 1] = first_tile[p] + TileCount(projections[p]);
  for (int r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int r1 = std::min(rows, r0 + kRowBlock);
    const double macs = static_cast<double>(r1 - r0) * in * first_tile[N] * kTileWeightRows;
#pragma omp parallel for schedule(dynamic, 8) if (macs >= kMinParallelMacs)
    for (int t = 0; t < first_tile[N]; ++t) {
      size_t p = 0;
      while (t >= first_tile[p + 1]) ++p;
      ProjectTile(x, r0, r1, in, projections[p], t - first_tile[p]);
    }
  }
}

void Linear(const float* x, int rows, int in, const Projection& projection) {
  Project(x, rows, in, std::array{projection});
}

// Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, per row. The mean is summed in double: the
// reference should not lose accuracy to summation order over 896 elements.
void RmsNormRows(const float* x, int rows, int n, const float* weight, float eps, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* x_row = x + static_cast<size_t>(r) * n;
    float* y_row = y + static_cast<size_t>(r) * n;
    double sum_squares = 0.0;
    for (int i = 0; i < n; ++i) sum_squares += static_cast<double>(x_row[i]) * x_row[i];
    const float variance = static_cast<float>(sum_squares / n);
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    for (int i = 0; i < n; ++i) y_row[i] = weight[i] * (x_row[i] * inv_rms);
  }
}

void AddInPlace(float* x, const float* delta, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += delta[i];
}

// gate = silu(gate) * up, elementwise (SwiGLU); silu(g) = g / (1 + exp(-g)) as PyTorch has it.
void SiluMulInPlace(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// Rotate-half RoPE on one head vector: the first half pairs with the second half (not
// interleaved pairs), as HF's apply_rotary_pos_emb.
void RotateHead(float* v, const float* cos, const float* sin, int half) {
  for (int i = 0; i < half; ++i) {
    const float a = v[i];
    const float b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i] + a * sin[i];
  }
}

int ThreadIndex() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int MaxThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::string ShapeString(size_t rows, size_t cols) {
  return "[" + std::to_string(rows) + (cols != 0 ? ", " + std::to_string(cols) : std::string()) + "]";
}

// cols == 0 means a vector of `rows` floats.
void RequireSize(const std::vector<float>& tensor, const std::string& name, size_t rows,
                 size_t cols) {
  const size_t expected = cols == 0 ? rows : rows * cols;
  Require(tensor.size() == expected,
          name + " has " + std::to_string(tensor.size()) + " floats, expected " +
              ShapeString(rows, cols) + " = " + std::to_string(expected));
}

std::string SessionName(int64_t id) { return "session " + std::to_string(id); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config and weights

void CpuQwen2Config::Validate() const {
  Require(layers >= 1, "layers must be >= 1, got " + std::to_string(layers));
  Require(hidden >= 1, "hidden must be >= 1, got " + std::to_string(hidden));
  Require(heads >= 1, "heads must be >= 1, got " + std::to_string(heads));
  Require(kv_heads >= 1, "kv_heads must be >= 1, got " + std::to_string(kv_heads));
  Require(heads % kv_heads == 0, "heads (" + std::to_string(heads) +
                                     ") must be a multiple of kv_heads (" +
                                     std::to_string(kv_heads) + ")");
  Require(head_dim >= 2 && head_dim % 2 == 0,
          "head_dim must be even and >= 2 for rotary embeddings, got " + std::to_string(head_dim));
  Require(ffn >= 1, "ffn must be >= 1, got " + std::to_string(ffn));
  // Both are used as float32: an epsilon of 1 or more swamps the activations it normalises, and
  // a theta past float32's range becomes inf (every rotation 0): a model of garbage, not an error.
  Require(rms_eps > 0.0 && rms_eps < 1.0, "rms_eps must be in (0, 1), got " + Num(rms_eps));
  Require(rope_theta > 0.0 && std::isfinite(static_cast<float>(rope_theta)),
          "rope_theta must be a finite float32 > 0, got " + Num(rope_theta));
  // The RoPE tables take max_session_len x head_dim floats up front and each session's cache
  // may grow to it: a limit far past any CosyVoice utterance is refused before allocating.
  Require(max_session_len >= 1 && max_session_len <= kMaxSessionLen,
          "max_session_len must be >= 1 and <= " + std::to_string(kMaxSessionLen) + ", got " +
              std::to_string(max_session_len));
}

std::string CpuQwen2Config::ToString() const {
  return "CpuQwen2Config(layers=" + std::to_string(layers) + ", hidden=" + std::to_string(hidden) +
         ", heads=" + std::to_string(heads) + ", kv_heads=" + std::to_string(kv_heads) +
         ", head_dim=" + std::to_string(head_dim) + ", ffn=" + std::to_string(ffn) + ", rms_eps=" + Num(rms_eps) +
         ", rope_theta=" + Num(rope_theta) + ", max_session_len=" + std::to_string(max_session_len) + ")";
}

void CpuQwen2Weights::Validate(const CpuQwen2Config& c) const {
  Require(vocab_size >= 1, "vocab_size must be >= 1, got " + std::to_string(vocab_size));
  const size_t hidden = c.hidden;
  RequireSize(embed_tokens, "embed_tokens", vocab_size, hidden);
  RequireSize(lm_head, "lm_head", vocab_size, hidden);
  RequireSize(norm, "norm.weight", hidden, 0);
  Require(layers.size() == static_cast<size_t>(c.layers),
          "the weights hold " + std::to_string(layers.size()) + " layers but the config says " +
              std::to_string(c.layers));
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "layers[" + std::to_string(i) + "].";
    for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) {
      RequireSize(layers[i].*t.member, p + t.name, static_cast<size_t>(Qwen2DimSize(t.rows, c)),
                  static_cast<size_t>(Qwen2DimSize(t.cols, c)));
    }
  }
}

CpuQwen2Config Qwen2ConfigFrom(const std::function<double(const char* name, bool integer)>& get,
                               int max_session_len) {
  CpuQwen2Config c;
  const auto integer = [&](const char* name) { return static_cast<int>(get(name, true)); };
  c.layers = integer("num_hidden_layers");
  c.hidden = integer("hidden_size");
  c.heads = integer("num_attention_heads");
  c.kv_heads = integer("num_key_value_heads");
  c.head_dim = integer("head_dim");
  c.ffn = integer("intermediate_size");
  c.rms_eps = get("rms_norm_eps", false);
  c.rope_theta = get("rope_theta", false);
  c.max_session_len = max_session_len;
  c.Validate();
  return c;
}

std::span<const Qwen2LayerTensor> Qwen2LayerTensors() {
  using L = CpuQwen2LayerWeights;
  using D = Qwen2Dim;
  static const Qwen2LayerTensor kTensors[] = {
      {"self_attn.q_proj.weight", &L::q_proj, D::kQWidth, D::kHidden},
      {"self_attn.q_proj.bias", &L::q_bias, D::kQWidth, D::kNone},
      {"self_attn.k_proj.weight", &L::k_proj, D::kKvWidth, D::kHidden},
      {"self_attn.k_proj.bias", &L::k_bias, D::kKvWidth, D::kNone},
      {"self_attn.v_proj.weight", &L::v_proj, D::kKvWidth, D::kHidden},
      {"self_attn.v_proj.bias", &L::v_bias, D::kKvWidth, D::kNone},
      {"self_attn.o_proj.weight", &L::o_proj, D::kHidden, D::kQWidth},
      {"mlp.gate_proj.weight", &L::gate_proj, D::kFfn, D::kHidden},
      {"mlp.up_proj.weight", &L::up_proj, D::kFfn, D::kHidden},
      {"mlp.down_proj.weight", &L::down_proj, D::kHidden, D::kFfn},
      {"input_layernorm.weight", &L::input_layernorm, D::kHidden, D::kNone},
      {"post_attention_layernorm.weight", &L::post_attention_layernorm, D::kHidden, D::kNone},
  };
  return kTensors;
}

int64_t Qwen2DimSize(Qwen2Dim dim, const CpuQwen2Config& c) {
  switch (dim) {
    case Qwen2Dim::kHidden: return c.hidden;
    case Qwen2Dim::kQWidth: return static_cast<int64_t>(c.heads) * c.head_dim;
    case Qwen2Dim::kKvWidth: return static_cast<int64_t>(c.kv_heads) * c.head_dim;
    case Qwen2Dim::kFfn: return c.ffn;
    case Qwen2Dim::kNone: break;
  }
  return 0;
}

std::vector<int64_t> Qwen2Shape(const Qwen2LayerTensor& t, const CpuQwen2Config& c) {
  std::vector<int64_t> shape{Qwen2DimSize(t.rows, c)};
  if (t.cols != Qwen2Dim::kNone) shape.push_back(Qwen2DimSize(t.cols, c));
  return shape;
}

// ---------------------------------------------------------------------------------------------
// Per-session KV cache

// The keys and values one session has accumulated: per layer, [capacity, kv_heads * head_dim]
// with RoPE already applied to the keys. A round writes its rows past length() and only Commit
// makes them part of the session, so a failed round leaves the session as it was.
class CpuQwen2Engine::SessionCache {
 public:
  SessionCache(int layers, int kv_width, int max_positions)
      : kv_width_(kv_width), max_positions_(max_positions), keys_(layers), values_(layers) {}

  int length() const { return length_; }

  // Makes room for `positions` positions, growing geometrically so that stepping one token at a
  // time does not copy the cache every step.
  void Reserve(int positions) {
    if (positions <= capacity_) return;
    const int grown = std::min(max_positions_, std::max(2 * capacity_, 64));
    const int capacity = std::max(positions, grown);
    for (auto& k : keys_) k.resize(static_cast<size_t>(capacity) * kv_width_);
    for (auto& v : values_) v.resize(static_cast<size_t>(capacity) * kv_width_);
    capacity_ = capacity;
  }

  float* key(int layer, int position) { return keys_[layer].data() + Offset(position); }
  float* value(int layer, int position) { return values_[layer].data() + Offset(position); }
  const float* key(int layer, int position) const { return keys_[layer].data() + Offset(position); }
  const float* value(int layer, int position) const {
    return values_[layer].data() + Offset(position);
  }

  void Commit(int length) { length_ = length; }

 private:
  size_t Offset(int position) const { return static_cast<size_t>(position) * kv_width_; }

  int length_ = 0;
  int capacity_ = 0;
  const int kv_width_;
  const int max_positions_;
  std::vector<std::vector<float>> keys_, values_;
};

// ---------------------------------------------------------------------------------------------
// One round

// Where each input's rows sit in the round's activations and in its session. Built and checked
// before anything changes.
struct CpuQwen2Engine::RoundPlan {
  struct Segment {
    int64_t session_id = 0;
    bool prefill = false;   // creates the session
    bool has_rows = false;  // its input is rows (a prefill or an append), not a token
    int first_row = 0;   // first row of this input in the round's activations
    int rows = 0;        // prompt_len for a prefill or an append, 1 for a step
    int start = 0;       // position of the first row in the session
    SessionCache* cache = nullptr;  // set by Forward once the session exists
  };
  std::vector<Segment> segments;  // one per input, in input order
  std::vector<int> row_segment;   // per activation row: its segment
  std::vector<int> row_position;  // per activation row: its position in the session
  int total_rows = 0;
  int longest_context = 0;        // the most positions one row attends to
};

// The round's activations, allocated before any parallel region (an exception cannot leave an
// OpenMP region).
struct CpuQwen2Engine::Workspace {
  Workspace(const CpuQwen2Config& c, int rows, int longest_context)
      : rows(rows),
        x(Size(rows, c.hidden)),
        normed(Size(rows, c.hidden)),
        q(Size(rows, c.heads * c.head_dim)),
        k(Size(rows, c.kv_heads * c.head_dim)),
        v(Size(rows, c.kv_heads * c.head_dim)),
        attn(Size(rows, c.heads * c.head_dim)),
        proj(Size(rows, c.hidden)),
        gate(Size(rows, c.ffn)),
        up(Size(rows, c.ffn)),
        scores_stride(longest_context),
        scores(Size(MaxThreads(), longest_context)) {}

  static size_t Size(int rows, int cols) { return static_cast<size_t>(rows) * cols; }

  const int rows;
  std::vector<float> x;       // the residual stream
  std::vector<float> normed;  // RMSNorm output feeding the next projections
  std::vector<float> q, k, v;
  std::vector<float> attn;    // attention output, all heads, before o_proj
  std::vector<float> proj;    // o_proj / down_proj output before the residual add
  std::vector<float> gate, up;
  const int scores_stride;
  std::vector<float> scores;  // one attention-score row per thread
};

CpuQwen2Engine::CpuQwen2Engine(const CpuQwen2Config& config, CpuQwen2Weights weights)
    : config_(config), weights_(std::move(weights)) {
  config_.Validate();
  weights_.Validate(config_);

  // HF's default RoPE, in float32 like transformers: inv_freq = 1 / theta^(2i / head_dim), the
  // angle float(position) * inv_freq rounded to float, then its cos and sin.
  const int half = config_.head_dim / 2;
  std::vector<float> inv_freq(half);
  const float theta = static_cast<float>(config_.rope_theta);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config_.head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  rope_cos_.resize(static_cast<size_t>(config_.max_session_len) * half);
  rope_sin_.resize(rope_cos_.size());
  for (int pos = 0; pos < config_.max_session_len; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq[i];
      rope_cos_[static_cast<size_t>(pos) * half + i] = std::cos(angle);
      rope_sin_[static_cast<size_t>(pos) * half + i] = std::sin(angle);
    }
  }
}

CpuQwen2Engine::~CpuQwen2Engine() = default;

void CpuQwen2Engine::EndSession(int64_t session_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  sessions_.erase(session_id);
  live_count_.store(sessions_.size());
}

void CpuQwen2Engine::Forward(std::span<const EngineInput> inputs, float* logits) {
  if (inputs.empty()) return;
  Require(logits != nullptr, "Forward needs a logits buffer, got a null pointer");
  std::lock_guard<std::mutex> lock(mutex_);
  RoundPlan plan = PlanRound(inputs);

  const int kv_width = config_.kv_heads * config_.head_dim;
  std::vector<int64_t> created;
  try {
    for (RoundPlan::Segment& seg : plan.segments) {
      if (seg.prefill) {
        auto cache = std::make_unique<SessionCache>(config_.layers, kv_width,
                                                    config_.max_session_len);
        seg.cache = cache.get();
        sessions_.emplace(seg.session_id, std::move(cache));
        created.push_back(seg.session_id);
      } else {
        seg.cache = sessions_.at(seg.session_id).get();
      }
      seg.cache->Reserve(seg.start + seg.rows);
    }
    RunRound(plan, inputs, logits);
  } catch (...) {
    for (int64_t id : created) sessions_.erase(id);
    live_count_.store(sessions_.size());
    throw;
  }
  for (const RoundPlan::Segment& seg : plan.segments) seg.cache->Commit(seg.start + seg.rows);
  live_count_.store(sessions_.size());
}

CpuQwen2Engine::RoundPlan CpuQwen2Engine::PlanRound(std::span<const EngineInput> inputs) const {
  RoundPlan plan;
  plan.segments.reserve(inputs.size());
  std::unordered_set<int64_t> seen;
  const int max_len = config_.max_session_len;
  for (const EngineInput& in : inputs) {
    const std::string who = SessionName(in.session_id);
    Require(seen.insert(in.session_id).second,
            who + " appears more than once in one round; a round takes one input per session");
    const auto live = sessions_.find(in.session_id);
    RoundPlan::Segment seg;
    seg.session_id = in.session_id;
    seg.first_row = plan.total_rows;
    if (in.prompt_rows != nullptr && in.append) {
      Require(in.prompt_len >= 1,
              who + ": an append needs at least one row, got prompt_len " +
                  std::to_string(in.prompt_len));
      if (live == sessions_.end()) {
        throw std::runtime_error(who + " is not live; an append needs a prefill first");
      }
      const int length = live->second->length();
      if (length + in.prompt_len > max_len) {
        throw std::runtime_error(who + " cannot take " + std::to_string(in.prompt_len) +
                                 " more rows: it holds " + std::to_string(length) +
                                 " positions and max_session_len is " + std::to_string(max_len));
      }
      seg.has_rows = true;
      seg.rows = in.prompt_len;
      seg.start = length;
    } else if (in.prompt_rows != nullptr) {
      Require(in.prompt_len >= 1,
              who + ": a prefill needs at least one prompt row, got prompt_len " +
                  std::to_string(in.prompt_len));
      if (live != sessions_.end()) {
        throw std::runtime_error(who + " is already live; end it before prefilling that id again");
      }
      if (in.prompt_len > max_len) {
        throw std::runtime_error(who + ": the prompt has " + std::to_string(in.prompt_len) +
                                 " rows, more than max_session_len " + std::to_string(max_len));
      }
      seg.prefill = true;
      seg.has_rows = true;
      seg.rows = in.prompt_len;
      seg.start = 0;
    } else {
      if (live == sessions_.end()) {
        throw std::runtime_error(who + " is not live; a step needs a prefill first");
      }
      Require(in.token >= 0 && in.token < weights_.vocab_size,
              who + ": token " + std::to_string(in.token) + " is out of range [0, " +
                  std::to_string(weights_.vocab_size) + ")");
      const int length = live->second->length();
      if (length + 1 > max_len) {
        throw std::runtime_error(who + " is full: it holds " + std::to_string(length) +
                                 " positions and max_session_len is " + std::to_string(max_len));
      }
      seg.rows = 1;
      seg.start = length;
    }
    for (int r = 0; r < seg.rows; ++r) {
      plan.row_segment.push_back(static_cast<int>(plan.segments.size()));
      plan.row_position.push_back(seg.start + r);
    }
    plan.total_rows += seg.rows;
    plan.longest_context = std::max(plan.longest_context, seg.start + seg.rows);
    plan.segments.push_back(seg);
  }
  return plan;
}

void CpuQwen2Engine::RunRound(const RoundPlan& plan, std::span<const EngineInput> inputs,
                              float* logits) {
  const int hidden = config_.hidden;
  const size_t row_bytes = sizeof(float) * hidden;
  Workspace ws(config_, plan.total_rows, plan.longest_context);

  // Input rows: a prefill's or an append's rows replace the embedding; a step looks its token
  // up.
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    const RoundPlan::Segment& seg = plan.segments[i];
    float* dst = ws.x.data() + static_cast<size_t>(seg.first_row) * hidden;
    if (seg.has_rows) {
      std::memcpy(dst, inputs[i].prompt_rows, row_bytes * seg.rows);
    } else {
      std::memcpy(dst, weights_.embed_tokens.data() + static_cast<size_t>(inputs[i].token) * hidden,
                  row_bytes);
    }
  }

  for (int layer = 0; layer < config_.layers; ++layer) RunLayer(layer, plan, ws);

  // Only the last row of each input produces logits.
  const int outputs = static_cast<int>(plan.segments.size());
  std::vector<float> last(static_cast<size_t>(outputs) * hidden);
  for (int i = 0; i < outputs; ++i) {
    const RoundPlan::Segment& seg = plan.segments[i];
    std::memcpy(last.data() + static_cast<size_t>(i) * hidden,
                ws.x.data() + static_cast<size_t>(seg.first_row + seg.rows - 1) * hidden,
                row_bytes);
  }
  std::vector<float> normed(last.size());
  RmsNormRows(last.data(), outputs, hidden, weights_.norm.data(),
              static_cast<float>(config_.rms_eps), normed.data());
  Linear(normed.data(), outputs, hidden,
         Projection{weights_.lm_head.data(), nullptr, weights_.vocab_size, logits});
}

void CpuQwen2Engine::RunLayer(int layer, const RoundPlan& plan, Workspace& ws) {
  const CpuQwen2LayerWeights& w = weights_.layers[layer];
  const int rows = ws.rows;
  const int hidden = config_.hidden;
  const int head_dim = config_.head_dim;
  const int q_width = config_.heads * head_dim;
  const int kv_width = config_.kv_heads * head_dim;
  const float eps = static_cast<float>(config_.rms_eps);

  // Self-attention block.
  RmsNormRows(ws.x.data(), rows, hidden, w.input_layernorm.data(), eps, ws.normed.data());
  Project(ws.normed.data(), rows, hidden,
          std::array{Projection{w.q_proj.data(), w.q_bias.data(), q_width, ws.q.data()},
                     Projection{w.k_proj.data(), w.k_bias.data(), kv_width, ws.k.data()},
                     Projection{w.v_proj.data(), w.v_bias.data(), kv_width, ws.v.data()}});

  const int half = head_dim / 2;
  for (int r = 0; r < rows; ++r) {
    const int pos = plan.row_position[r];
    const float* cos = rope_cos_.data() + static_cast<size_t>(pos) * half;
    const float* sin = rope_sin_.data() + static_cast<size_t>(pos) * half;
    float* q_row = ws.q.data() + static_cast<size_t>(r) * q_width;
    float* k_row = ws.k.data() + static_cast<size_t>(r) * kv_width;
    for (int h = 0; h < config_.heads; ++h) RotateHead(q_row + h * head_dim, cos, sin, half);
    for (int h = 0; h < config_.kv_heads; ++h) RotateHead(k_row + h * head_dim, cos, sin, half);
    SessionCache& cache = *plan.segments[plan.row_segment[r]].cache;
    std::memcpy(cache.key(layer, pos), k_row, sizeof(float) * kv_width);
    std::memcpy(cache.value(layer, pos), ws.v.data() + static_cast<size_t>(r) * kv_width,
                sizeof(float) * kv_width);
  }

  Attend(layer, plan, ws);
  Linear(ws.attn.data(), rows, q_width,
         Projection{w.o_proj.data(), nullptr, hidden, ws.proj.data()});
  AddInPlace(ws.x.data(), ws.proj.data(), ws.x.size());

  // MLP block: down(silu(gate(x)) * up(x)).
  RmsNormRows(ws.x.data(), rows, hidden, w.post_attention_layernorm.data(), eps,
              ws.normed.data());
  Project(ws.normed.data(), rows, hidden,
          std::array{Projection{w.gate_proj.data(), nullptr, config_.ffn, ws.gate.data()},
                     Projection{w.up_proj.data(), nullptr, config_.ffn, ws.up.data()}});
  SiluMulInPlace(ws.gate.data(), ws.up.data(), ws.gate.size());
  Linear(ws.gate.data(), rows, config_.ffn,
         Projection{w.down_proj.data(), nullptr, hidden, ws.proj.data()});
  AddInPlace(ws.x.data(), ws.proj.data(), ws.x.size());
}

// Causal grouped-query attention for every (row, query head) of the round. Each row attends to
// its session's cached positions 0..its own position, which RunLayer has just written for the
// round's rows. One thread computes one (row, head) entirely, so results do not depend on the
// thread count or on the other rows.
void CpuQwen2Engine::Attend(int layer, const RoundPlan& plan, Workspace& ws) const {
  const int head_dim = config_.head_dim;
  const int heads = config_.heads;
  const int group = heads / config_.kv_heads;
  const int q_width = heads * head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const int items = ws.rows * heads;
  double macs = 0.0;  // q.k and p*v over every row's context
  for (int r = 0; r < ws.rows; ++r) macs += 2.0 * heads * head_dim * (plan.row_position[r] + 1);

#pragma omp parallel for schedule(dynamic, 4) if (macs >= kMinParallelMacs)
  for (int item = 0; item < items; ++item) {
    const int row = item / heads;
    const int head = item % heads;
    const SessionCache& cache = *plan.segments[plan.row_segment[row]].cache;
    const int context = plan.row_position[row] + 1;
    const int kv_offset = (head / group) * head_dim;
    const float* q = ws.q.data() + static_cast<size_t>(row) * q_width + head * head_dim;
    float* scores = ws.scores.data() + static_cast<size_t>(ThreadIndex()) * ws.scores_stride;

    float max_score = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < context; ++t) {
      scores[t] = Dot(cache.key(layer, t) + kv_offset, q, head_dim) * scale;
      max_score = std::max(max_score, scores[t]);
    }
    float sum = 0.0f;
    for (int t = 0; t < context; ++t) {
      scores[t] = std::exp(scores[t] - max_score);
      sum += scores[t];
    }
    float* out = ws.attn.data() + static_cast<size_t>(row) * q_width + head * head_dim;
    std::fill(out, out + head_dim, 0.0f);
    for (int t = 0; t < context; ++t) {
      const float p = scores[t] / sum;
      const float* v = cache.value(layer, t) + kv_offset;
      for (int d = 0; d < head_dim; ++d) out[d] += p * v[d];
    }
  }
}

}  // namespace cosyfast
