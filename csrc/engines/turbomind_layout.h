// How cosyfast's Qwen2 weights (float32, PyTorch's [out, in] rows: engines/cpu_qwen2.h) are laid
// out in TurboMind 0.16.0's weight tree, as lmdeploy's own converter lays them out, so that the
// C++ loader (engines/turbomind/tm_loader.h) gives the same bytes and therefore bit-identical
// logits (docs/turbomind_weights.md, section 4). Pure host code, no CUDA: tested on the CPU
// against an independent NumPy layout (tests/test_turbomind_layout.py).
//
// Every tensor is rounded to bf16 once (round to nearest even, as torch does); every other step
// is a permutation, so the order of rounding and permuting does not change a byte.
#pragma once

#include <cstdint>
#include <vector>

#include "engines/cpu_qwen2.h"

namespace cosyfast {

// TurboMind's vocabulary: the decoder rows rounded up to this (CV2 6592, CV3 6784), zero rows
// after the real ones; cosyfast's export does the same (python/cosyfast/checkpoint.py).
inline constexpr int kTurboMindVocabMultiple = 64;
int TurboMindPaddedVocab(int rows);

// The fused gate/up projection's column order. Hopper's bf16 GEMM applies SiLU in its epilogue
// and reads gate and up in alternating blocks of 64 columns; other GPUs read [gate | up].
enum class GateUpLayout { kConcatenated, kBlocks64 };
inline constexpr int kGateUpBlock = 64;

// One decoder layer in TurboMind's layout, bf16 bits, row-major.
struct TurboMindLayerTensors {
  std::vector<uint16_t> w_qkv;           // [hidden, q + 2 kv] = [q' | k' | v], q'/k' rotary-reordered
  std::vector<uint16_t> qkv_bias;        // [q + 2 kv] = [q_bias' | k_bias' | v_bias]
  std::vector<uint16_t> wo;              // [q, hidden]
  std::vector<uint16_t> w1w3;            // [hidden, 2 ffn], gate/up per GateUpLayout
  std::vector<uint16_t> w2;              // [ffn, hidden]
  std::vector<uint16_t> attention_norm;  // [hidden]
  std::vector<uint16_t> ffn_norm;        // [hidden]
};

// Throws std::invalid_argument when the config cannot be laid out so (an odd head_dim; kBlocks64
// needs ffn % 64 == 0): the loader asks before it creates TurboMind.
void CheckTurboMindLayout(const CpuQwen2Config& config, GateUpLayout layout);

// Checks as CheckTurboMindLayout.
TurboMindLayerTensors TurboMindLayer(const CpuQwen2Config& config, const CpuQwen2LayerWeights& layer,
                                     GateUpLayout layout);

// The token embedding, [padded_vocab, hidden]: `rows` ([vocab, hidden]) then zero rows.
std::vector<uint16_t> TurboMindEmbedding(const std::vector<float>& rows, int vocab, int hidden, int padded_vocab);
// The output projection, [hidden, padded_vocab]: `lm_head` ([vocab, hidden]) transposed, zero columns after.
std::vector<uint16_t> TurboMindOutput(const std::vector<float>& lm_head, int vocab, int hidden, int padded_vocab);

}  // namespace cosyfast
