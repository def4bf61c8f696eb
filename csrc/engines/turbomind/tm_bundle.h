// A bundle (io/bundle.h: what `cosyfast export-bundle` writes) on the TurboMind engine, loaded
// without Python: one TurboMind per replica, replica i on GPU first_device + i, each with the
// memory budget of core/gpu_memory.h and the weights loaded by tm_loader.h. What the C API's
// engine "turbomind" runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tables.h"
#include "engines/turbomind/tm_generator.h"

namespace cosyfast::tm {

struct BundleLoadOptions {
  std::string dir;
  int first_device = 0;
  int replicas = 1;
  int max_batch = 0;
  int max_session_len = 0;
  double gpu_memory = 0;  // per engine: 0 the default plan, > 1 GB, (0, 1] a fraction of the GPU
  Table::Storage table_storage = Table::Storage::kFloat32;
};

struct TurboMindBundle {
  std::string kind;  // "cosyvoice2" / "cosyvoice3"
  std::vector<std::shared_ptr<Generator>> replicas;
};

// Throws std::invalid_argument / std::runtime_error sentences: a bad bundle, a device that does
// not exist, a budget that cannot hold max_batch sessions, too little free memory.
TurboMindBundle LoadTurboMindBundle(const BundleLoadOptions& options);

}  // namespace cosyfast::tm
