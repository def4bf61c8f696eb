// libFuzzer target for the safetensors reader (csrc/io/safetensors.h): the input is written to a
// scratch file and opened with SafetensorsFile, which checks the whole header; then every tensor's
// entry is read back (elements, shape) and each F32 tensor's data is read with ReadF32, as the
// bundle loader does. A bad file must end in std::runtime_error, never a crash or a sanitizer report.
// FUZZ_VERBOSE=1 prints what became of each input (when replaying one: fuzz_safetensors FILE).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "fuzz_util.h"
#include "io/safetensors.h"

using cosyfast::io::SafetensorsFile;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::ScratchDir() + "/weights.safetensors";
  fuzz::WriteFile(path, data, size);
  try {
    const SafetensorsFile st(path);
    for (const auto& [name, info] : st.tensors()) {
      if (&st.Info(name) != &info) std::abort();
      const int64_t n = info.elements();
      if (n < 0 || info.end > size) std::abort();  // checked against the file when the header was read
      (void)cosyfast::io::ShapeString(info.shape);
      if (info.dtype == "F32") {
        const std::vector<float> v = st.ReadF32(name, info.shape);
        if (static_cast<int64_t>(v.size()) != n) std::abort();
      } else {
        try {
          (void)st.ReadF32(name, info.shape);
          std::abort();  // only F32 may be read
        } catch (const std::runtime_error&) {}
      }
    }
    try {
      (void)st.Info("no such tensor \x01");
      std::abort();
    } catch (const std::runtime_error&) {}
    if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "read %zu tensors\n", st.tensors().size());
  } catch (const std::runtime_error& e) {
    if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "refused: %s\n", e.what());
  }
  return 0;
}
