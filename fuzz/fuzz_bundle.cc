// libFuzzer target for the CPU bundle reader (csrc/io/bundle.h): the input holds both files of a
// bundle, as [config length: 4 bytes, little-endian][config.json][weights.safetensors]; they are
// written into a scratch bundle directory and loaded with LoadCpuBundle, which checks every field
// and tensor. A bad bundle must end in a sentence (std::runtime_error, or std::invalid_argument from
// the shared validators), never a crash, a sanitizer report or a hang.
// FUZZ_VERBOSE=1 prints what became of each input (when replaying one: fuzz_bundle FILE).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fuzz_util.h"
#include "io/bundle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = fuzz::ScratchDir();
  uint32_t config_len = 0;
  if (size >= 4) std::memcpy(&config_len, data, 4);  // little-endian hosts only, as the reader
  const size_t rest = size >= 4 ? size - 4 : 0;
  const size_t n = config_len < rest ? config_len : rest;
  const uint8_t* config = data + (size >= 4 ? 4 : size);
  fuzz::WriteFile(dir + "/config.json", config, n);
  fuzz::WriteFile(dir + "/weights.safetensors", config + n, rest - n);
  try {
    cosyfast::io::CpuBundle b = cosyfast::io::LoadCpuBundle(dir, 64, cosyfast::Table::Storage::kFloat32);
    if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "loaded a %s bundle, %d layers\n", b.kind.c_str(), b.engine_config.layers);
  } catch (const std::runtime_error& e) {
    if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "refused: %s\n", e.what());
  } catch (const std::invalid_argument& e) {
    if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "refused: %s\n", e.what());
  }  // anything else (bad_alloc, length_error, out_of_range, ...) escapes and is a finding
  return 0;
}
