#include "engines/turbomind/tm_bundle.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "core/gpu_memory.h"
#include "engines/turbomind/tm_loader.h"
#include "engines/turbomind_layout.h"
#include "io/bundle.h"

namespace cosyfast::tm {

TurboMindBundle LoadTurboMindBundle(const BundleLoadOptions& o) {
  if (o.replicas < 1) throw std::invalid_argument("replicas must be >= 1, got " + std::to_string(o.replicas));
  const int gpus = CudaDeviceCount();
  if (gpus == 0) throw std::runtime_error("the turbomind engine needs an NVIDIA GPU, and this process sees none");
  if (o.first_device < 0 || o.first_device + o.replicas > gpus) {
    throw std::invalid_argument("replicas on GPUs " + std::to_string(o.first_device) + ".." +
                                std::to_string(o.first_device + o.replicas - 1) + " need that many GPUs, and this "
                                "process sees " + std::to_string(gpus) + " (device must be in [0, " +
                                std::to_string(gpus - o.replicas) + "])");
  }
  // One read of the bundle serves every replica: TurboMind copies the weights to its GPU.
  io::CpuBundle bundle = io::LoadCpuBundle(o.dir, o.max_session_len, o.table_storage);
  const int padded_vocab = TurboMindPaddedVocab(bundle.engine_weights.vocab_size);
  auto tables = std::make_shared<const PromptTables>(std::move(bundle.tables));
  TurboMindBundle out{bundle.kind, {}};
  for (int r = 0; r < o.replicas; ++r) {
    LoadOptions load;
    load.device = o.first_device + r;
    load.max_batch = o.max_batch;
    load.max_session_len = o.max_session_len;
    const auto [free, total] = CudaMemory(load.device);
    const GpuMemoryPlan plan = PlanGpuMemory(bundle.engine_config, padded_vocab, o.max_batch, o.max_session_len,
                                             total, o.gpu_memory);
    load.cache_max_entry_count = CacheMaxEntryCount(plan, free);
    std::shared_ptr<turbomind::TurboMind> model = LoadTurboMind(bundle.engine_config, bundle.engine_weights, load);
    EngineOptions engine_options;
    engine_options.hidden_size = bundle.engine_config.hidden;
    engine_options.vocab_size = padded_vocab;
    engine_options.max_session_len = o.max_session_len;
    auto engine = std::make_shared<Engine>(std::move(model), engine_options);
    out.replicas.push_back(std::make_shared<Generator>(tables, bundle.vocab, bundle.decoder_bias, std::move(engine)));
  }
  return out;
}

}  // namespace cosyfast::tm
