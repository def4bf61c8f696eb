#include "engines/turbomind_layout.h"

#include <stdexcept>
#include <string>

#include "core/tables.h"  // FloatToBFloat16, ToBFloat16

namespace cosyfast {
namespace {

// TurboMind's rotary kernel rotates adjacent (x, y) pairs; Hugging Face's rotate-half pairs
// column j with column j + head_dim / 2. So within each head, TurboMind's column 2j + s holds
// Hugging Face's column s * head_dim / 2 + j. q and k get the same permutation, so q.k and
// attention are unchanged; v and o need none.
int RotarySource(int column, int head_dim) {
  const int head = column / head_dim, within = column % head_dim;
  return head * head_dim + (within % 2) * (head_dim / 2) + within / 2;
}

// Writes `w` ([out, in] rows) transposed into columns [col0, col0 + out) of the row-major
// [in, width] matrix `dst`: column col0 + c takes row source(c) of `w`.
template <class Source>
void TransposeInto(std::vector<uint16_t>& dst, int width, int col0, const std::vector<float>& w, int out, int in,
                   Source source) {
  for (int c = 0; c < out; ++c) {
    const float* row = w.data() + static_cast<size_t>(source(c)) * in;
    for (int i = 0; i < in; ++i) dst[static_cast<size_t>(i) * width + col0 + c] = FloatToBFloat16(row[i]);
  }
}

int Identity(int c) { return c; }

}  // namespace

int TurboMindPaddedVocab(int rows) {
  if (rows <= 0) throw std::invalid_argument("the vocabulary needs at least one row, got " + std::to_string(rows));
  return (rows + kTurboMindVocabMultiple - 1) / kTurboMindVocabMultiple * kTurboMindVocabMultiple;
}

void CheckTurboMindLayout(const CpuQwen2Config& c, GateUpLayout layout) {
  if (c.head_dim % 2 != 0) {
    throw std::invalid_argument("head_dim must be even for rotary embeddings, got " + std::to_string(c.head_dim));
  }
  if (layout == GateUpLayout::kBlocks64 && c.ffn % kGateUpBlock != 0) {
    throw std::invalid_argument("intermediate_size " + std::to_string(c.ffn) + " is not a multiple of " +
                                std::to_string(kGateUpBlock) + ", which TurboMind's fused SiLU on Hopper needs");
  }
}

TurboMindLayerTensors TurboMindLayer(const CpuQwen2Config& c, const CpuQwen2LayerWeights& w, GateUpLayout layout) {
  CheckTurboMindLayout(c, layout);
  const int h = c.hidden, q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim, f = c.ffn, hd = c.head_dim;
  TurboMindLayerTensors t;
  const int qkv = q + 2 * kv;
  const auto rotary = [hd](int col) { return RotarySource(col, hd); };
  t.w_qkv.resize(static_cast<size_t>(h) * qkv);
  TransposeInto(t.w_qkv, qkv, 0, w.q_proj, q, h, rotary);
  TransposeInto(t.w_qkv, qkv, q, w.k_proj, kv, h, rotary);
  TransposeInto(t.w_qkv, qkv, q + kv, w.v_proj, kv, h, Identity);
  t.qkv_bias.resize(qkv);
  for (int i = 0; i < q; ++i) t.qkv_bias[i] = FloatToBFloat16(w.q_bias[RotarySource(i, hd)]);
  for (int i = 0; i < kv; ++i) t.qkv_bias[q + i] = FloatToBFloat16(w.k_bias[RotarySource(i, hd)]);
  for (int i = 0; i < kv; ++i) t.qkv_bias[q + kv + i] = FloatToBFloat16(w.v_bias[i]);

  t.wo.resize(static_cast<size_t>(q) * h);
  TransposeInto(t.wo, h, 0, w.o_proj, h, q, Identity);

  t.w1w3.resize(static_cast<size_t>(h) * 2 * f);
  if (layout == GateUpLayout::kConcatenated) {
    TransposeInto(t.w1w3, 2 * f, 0, w.gate_proj, f, h, Identity);
    TransposeInto(t.w1w3, 2 * f, f, w.up_proj, f, h, Identity);
  } else {
    // Column g * 128 + s * 64 + j holds gate (s = 0) or up (s = 1) row g * 64 + j.
    const int b = kGateUpBlock;
    for (int g = 0; g < f / b; ++g) {
      const auto rows = [g, b](int j) { return g * b + j; };
      TransposeInto(t.w1w3, 2 * f, g * 2 * b, w.gate_proj, b, h, rows);
      TransposeInto(t.w1w3, 2 * f, g * 2 * b + b, w.up_proj, b, h, rows);
    }
  }
  t.w2.resize(static_cast<size_t>(f) * h);
  TransposeInto(t.w2, h, 0, w.down_proj, h, f, Identity);
  t.attention_norm = ToBFloat16(w.input_layernorm);
  t.ffn_norm = ToBFloat16(w.post_attention_layernorm);
  return t;
}

std::vector<uint16_t> TurboMindEmbedding(const std::vector<float>& rows, int vocab, int hidden, int padded_vocab) {
  if (padded_vocab < vocab || rows.size() != static_cast<size_t>(vocab) * hidden) {
    throw std::invalid_argument("the embedding does not have " + std::to_string(vocab) + " x " + std::to_string(hidden) +
                                " values or the padded vocabulary is smaller");
  }
  std::vector<uint16_t> out = ToBFloat16(rows);
  out.resize(static_cast<size_t>(padded_vocab) * hidden, 0);
  return out;
}

std::vector<uint16_t> TurboMindOutput(const std::vector<float>& lm_head, int vocab, int hidden, int padded_vocab) {
  if (padded_vocab < vocab || lm_head.size() != static_cast<size_t>(vocab) * hidden) {
    throw std::invalid_argument("the output projection does not have " + std::to_string(vocab) + " x " +
                                std::to_string(hidden) + " values or the padded vocabulary is smaller");
  }
  std::vector<uint16_t> out(static_cast<size_t>(hidden) * padded_vocab, 0);
  TransposeInto(out, padded_vocab, 0, lm_head, vocab, hidden, Identity);
  return out;
}

}  // namespace cosyfast
