#include "engines/turbomind/tm_loader.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/tables.h"  // ToBFloat16
#include "engines/turbomind_layout.h"
#include "src/turbomind/core/context.h"
#include "src/turbomind/core/data_format.h"
#include "src/turbomind/models/attention_weight.h"
#include "src/turbomind/models/decoder_layer_weight.h"
#include "src/turbomind/models/ffn_weight.h"
#include "src/turbomind/models/linear_weight.h"
#include "src/turbomind/models/llama/cosyfast_decode_gemm.h"
#include "src/turbomind/models/model_weight.h"
#include "src/turbomind/models/norm_weight.h"
#include "src/turbomind/utils/cuda_utils.h"

namespace cosyfast::tm {
namespace {

namespace ft = turbomind;
namespace core = turbomind::core;

// The RoPE of a Qwen2 checkpoint without rope_scaling: TurboMind's kDefault (its 0 is kNull,
// which rotates nothing).
constexpr int kRopeDefault = 1;
// What cosyfast's export writes as max_position_embeddings (python/cosyfast/export.py).
constexpr int kMinPositionEmbeddings = 32768;

void CheckCuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw std::runtime_error(what + " failed: " + cudaGetErrorString(status));
}

std::unique_ptr<core::Module> Create(const core::ModuleConfig& config) {
  std::unique_ptr<core::Module> module = core::Module::create(config);
  if (!module) throw std::runtime_error("this TurboMind build has no module type " + std::string(config.module_type));
  return module;
}

// add_child returns null (and drops the child) for a name the parent does not have.
core::Module* Attach(core::Module& parent, const std::string& name, std::unique_ptr<core::Module> child) {
  core::Module* added = parent.add_child(name, std::move(child));
  if (!added) throw std::logic_error(std::string("TurboMind's ") + parent.type() + " has no child '" + name + "'");
  return added;
}

// Allocates `param` on the device (from the weight context's allocator) and copies `data` in.
void Upload(core::Module& module, const char* param, const std::vector<uint16_t>& data, std::vector<size_t> shape) {
  size_t count = 1;
  for (size_t d : shape) count *= d;
  if (count != data.size()) throw std::logic_error(std::string("tensor ") + param + " has the wrong size for its shape");
  core::Tensor tensor = module.param(param).alloc(shape, ft::kBfloat16);
  CheckCuda(cudaMemcpy(tensor.raw_data(), data.data(), data.size() * sizeof(uint16_t), cudaMemcpyHostToDevice),
            std::string("copying ") + module.full_path() + "." + param + " to the GPU");
}

core::LinearConfig Linear(int input_dim, int output_dim, bool has_bias) {
  core::LinearConfig c;
  c.input_dim = input_dim;
  c.output_dim = output_dim;
  c.data_type = ft::kBfloat16;
  c.format = ft::ResolveLinearWeightFormat(ft::kBfloat16, ft::kBfloat16, 1, 1);  // plain bf16
  c.has_bias = has_bias;
  return c;
}

core::NormConfig Norm(const CpuQwen2Config& c) {
  core::NormConfig n;
  n.dim = c.hidden;
  n.data_type = ft::kBfloat16;
  n.norm_eps = static_cast<float>(c.rms_eps);
  n.zero_centered = false;
  return n;
}

std::unique_ptr<core::Module> NormModule(const CpuQwen2Config& c, const std::vector<uint16_t>& weight) {
  auto norm = Create(Norm(c));
  Upload(*norm, "weight", weight, {static_cast<size_t>(c.hidden)});
  return norm;
}

core::AttentionConfig Attention(const CpuQwen2Config& c, int max_session_len) {
  core::AttentionConfig a;
  a.hidden_dim = c.hidden;
  a.head_dim = c.head_dim;
  a.head_num = c.heads;
  a.kv_head_num = c.kv_heads;
  a.tp_size = 1;  // left 0, TurboMind divides by it
  a.tp_rank = 0;
  a.data_type = ft::kBfloat16;
  a.window_size = 0;
  a.softmax_scale = 0.f;  // TurboMind then uses 1/sqrt(head_dim)
  a.rope.type = kRopeDefault;
  a.rope.base = static_cast<float>(c.rope_theta);
  a.rope.dim = c.head_dim;
  a.rope.factor = 1.f;
  a.rope.max_position_embeddings = std::max(kMinPositionEmbeddings, max_session_len);
  return a;
}

core::FfnConfig Ffn(const CpuQwen2Config& c, bool fused_silu) {
  core::FfnConfig f;
  f.hidden_dim = c.hidden;
  f.inter_size = c.ffn;
  f.act_type = 0;  // SiLU
  f.fuse_silu = fused_silu;
  f.is_expert = false;
  f.data_type = ft::kBfloat16;
  f.tp_size = 1;
  f.tp_rank = 0;
  return f;
}

std::unique_ptr<core::Module> LinearModule(int input_dim, int output_dim, const std::vector<uint16_t>& weight,
                                           const std::vector<uint16_t>* bias) {
  auto linear = Create(Linear(input_dim, output_dim, bias != nullptr));
  Upload(*linear, "weight", weight, {static_cast<size_t>(input_dim), static_cast<size_t>(output_dim)});
  if (bias) Upload(*linear, "bias", *bias, {static_cast<size_t>(output_dim)});
  return linear;
}

std::unique_ptr<core::Module> DecoderLayer(const CpuQwen2Config& c, const CpuQwen2LayerWeights& w,
                                           GateUpLayout gate_up, int max_session_len) {
  // Laid out per layer, so the host holds one layer's bf16 copy at a time.
  const TurboMindLayerTensors t = TurboMindLayer(c, w, gate_up);
  const int q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  auto layer = Create(core::DecoderLayerConfig{});

  auto attention = Create(Attention(c, max_session_len));
  Attach(*attention, "w_qkv", LinearModule(c.hidden, q + 2 * kv, t.w_qkv, &t.qkv_bias));
  Attach(*attention, "wo", LinearModule(q, c.hidden, t.wo, nullptr));
  Attach(*layer, "attention", std::move(attention));

  auto ffn = Create(Ffn(c, gate_up == GateUpLayout::kBlocks64));
  Attach(*ffn, "w1w3", LinearModule(c.hidden, 2 * c.ffn, t.w1w3, nullptr));
  Attach(*ffn, "w2", LinearModule(c.ffn, c.hidden, t.w2, nullptr));
  Attach(*layer, "feed_forward", std::move(ffn));

  Attach(*layer, "attention_norm", NormModule(c, t.attention_norm));
  Attach(*layer, "ffn_norm", NormModule(c, t.ffn_norm));
  return layer;
}

}  // namespace

void LoadOptions::Validate() const {
  if (device < 0) throw std::invalid_argument("device must be >= 0, got " + std::to_string(device));
  if (max_batch < 1) throw std::invalid_argument("max_batch must be >= 1, got " + std::to_string(max_batch));
  if (max_session_len < 2) {
    throw std::invalid_argument("max_session_len must be >= 2, got " + std::to_string(max_session_len));
  }
  if (!(cache_max_entry_count > 0.0 && cache_max_entry_count < 1.0)) {
    throw std::invalid_argument("the KV cache's share of free GPU memory must be in (0, 1), got " +
                                std::to_string(cache_max_entry_count));
  }
}

ft::EngineConfig MakeEngineConfig(const LoadOptions& o) {
  o.Validate();
  ft::EngineConfig e;
  e.data_type = ft::kBfloat16;
  e.state_dtype = ft::kBfloat16;
  e.cache_block_seq_len = 64;
  e.quant_policy = 0;
  e.max_batch_size = o.max_batch;
  e.max_prefill_token_num = 8192;
  e.session_len = o.max_session_len;
  e.cache_max_block_count = static_cast<float>(o.cache_max_entry_count);
  e.cache_chunk_size = -1;
  e.enable_prefix_caching = false;
  e.cache_checkpoint_interval = 4096;
  e.cache_prompt = "auto";
  e.cache_prompt_boundary_skip = 1;
  e.cache_generation = "auto";
  e.enable_metrics = true;  // cosyfast reads the schedule metrics (live sequences, iterations)
  e.num_tokens_per_iter = 0;
  e.max_prefill_iters = 1;
  e.async_ = 1;
  e.outer_dp_size = 1;
  e.attn_dp_size = 1;
  e.attn_tp_size = 1;
  e.attn_cp_size = 1;
  e.mlp_tp_size = 1;
  e.ep_size = 1;
  e.devices = {o.device};
  e.nnodes = 1;
  e.node_rank = 0;
  e.communicator = "nccl";
  return e;
}

ft::TurboMind::FFICtxFactory NoFfiContext() {
  return [] { return std::shared_ptr<void>(); };
}

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: no driver or no GPU is an answer here, not an error
    return 0;
  }
  return n;
}

std::pair<int64_t, int64_t> CudaMemory(int device) {
  const int n = CudaDeviceCount();
  if (device < 0 || device >= n) {
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist: this process sees " +
                                std::to_string(n) + " GPU" + (n == 1 ? "" : "s"));
  }
  int previous = 0;
  CheckCuda(cudaGetDevice(&previous), "cudaGetDevice");
  CheckCuda(cudaSetDevice(device), "selecting CUDA device " + std::to_string(device));
  size_t free = 0, total = 0;
  const cudaError_t status = cudaMemGetInfo(&free, &total);
  cudaSetDevice(previous);
  CheckCuda(status, "reading the memory of CUDA device " + std::to_string(device));
  return {static_cast<int64_t>(free), static_cast<int64_t>(total)};
}

std::unique_ptr<ft::TurboMind> LoadTurboMind(const CpuQwen2Config& config, const CpuQwen2Weights& weights,
                                             const LoadOptions& options) {
  // Everything TurboMind would check (and abort on) is checked here first.
  config.Validate();
  weights.Validate(config);
  const ft::EngineConfig engine_config = MakeEngineConfig(options);
  CudaMemory(options.device);  // the device exists and answers
  const int padded_vocab = TurboMindPaddedVocab(weights.vocab_size);

  ft::CudaDeviceGuard device(options.device);  // LinearWeight reads the SM of the current device
  // Hopper's bf16 GEMM fuses SiLU and reads gate/up in blocks; the Python converter's test is the
  // capability (9, 0).
  const GateUpLayout gate_up = ft::getSMVersion() == 90 ? GateUpLayout::kBlocks64 : GateUpLayout::kConcatenated;
  CheckTurboMindLayout(config, gate_up);
  // The context's LlamaLinear reads fast_decode when it is made (CreateContext), the engine's
  // decoder decode_graphs (CreateEngine, below).
  ft::cosyfast::DecodeScope decode(options.fast_decode, options.decode_graphs);
  auto model = std::make_unique<ft::TurboMind>("", engine_config, NoFfiContext());
  model->CreateContext(0);
  core::Module* root = model->CreateRoot(0);
  {
    auto [stream, allocator] = model->weight_context(0);
    core::ContextGuard context(stream, allocator);  // params are allocated from the root's pool

    core::ModelWeightConfig text_config;
    text_config.hidden_units = config.hidden;
    text_config.data_type = ft::kBfloat16;
    text_config.tp_size = 1;
    text_config.tp_rank = 0;
    auto text_model = Create(text_config);
    Attach(*text_model, "norm", NormModule(config, ToBFloat16(weights.norm)));
    Attach(*text_model, "output",
           LinearModule(config.hidden, padded_vocab,
                        TurboMindOutput(weights.lm_head, weights.vocab_size, config.hidden, padded_vocab), nullptr));
    core::Module* layers = Attach(*text_model, "layers", Create(core::ModuleListConfig{}));
    for (int i = 0; i < config.layers; ++i) {
      Attach(*layers, std::to_string(i), DecoderLayer(config, weights.layers[i], gate_up, options.max_session_len));
    }
    Upload(*text_model, "tok_embeddings",
           TurboMindEmbedding(weights.embed_tokens, weights.vocab_size, config.hidden, padded_vocab),
           {static_cast<size_t>(padded_vocab), static_cast<size_t>(config.hidden)});
    Attach(*root, "text_model", std::move(text_model));
    CheckCuda(cudaDeviceSynchronize(), "uploading the weights");
  }
  model->ProcessWeights(0);
  model->CreateEngine(0);
  return model;
}

}  // namespace cosyfast::tm
