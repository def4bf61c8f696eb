// Command-line pieces shared by the host programs (cosyfast_host.cc, cosyfast_load.cc): number and
// id-list parsing, and the model flags, so that both programs spell and check them the same way.
// Values the C API checks (ranges of the config fields) are passed through: its sentence names the
// problem; only what must be mapped to a field (a name to an enum) is checked here.
#pragma once

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cosyfast/cosyfast.hpp"

namespace cosyfast::tools {

// A mistake in the command line: the program prints it with its usage and exits 2.
struct UsageError {
  std::string message;
};

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

inline int64_t ParseInt(const std::string& s, const std::string& flag, int64_t lo, int64_t hi) {
  if (s.empty()) throw UsageError{flag + " needs an integer"};
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end != '\0' || v < lo || v > hi) {
    throw UsageError{flag + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"};
  }
  return v;
}

// An int32 config or option field: any int32, so that the C API's own check names a bad value.
inline int32_t ParseField(const std::string& s, const std::string& flag) {
  return static_cast<int32_t>(ParseInt(s, flag, -kInt32Max, kInt32Max));
}

inline double ParseDouble(const std::string& s, const std::string& flag) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || errno || *end != '\0') throw UsageError{flag + ": '" + s + "' is not a number"};
  return v;
}

// Comma-separated ids; "" is none.
inline std::vector<int32_t> ParseIds(const std::string& s, const std::string& flag) {
  std::vector<int32_t> ids;
  if (s.empty()) return ids;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    ids.push_back(static_cast<int32_t>(ParseInt(item, flag, std::numeric_limits<int32_t>::min(), kInt32Max)));
    if (comma == std::string::npos) return ids;
    start = comma + 1;
  }
}

// The flags that make the model (cosyfast_model_create's config), one spelling for every host.
class ModelFlags {
 public:
  static constexpr const char* kUsage =
      "  --engine cpu|turbomind       the engine (default cpu; turbomind needs a GPU build)\n"
      "  --device N                   turbomind: the CUDA device of the first replica (default 0)\n"
      "  --gpu-memory X               turbomind: GPU memory per engine, GB (> 1) or a fraction (<= 1)\n"
      "                               of the GPU (default 0: what max-batch sessions need)\n"
      "  --max-batch N                most sessions stepped together (default 256)\n"
      "  --max-session-len N          engine session limit (default 4096)\n"
      "  --table-dtype float32|bfloat16  prompt table storage (default float32)\n"
      "  --replicas N                 engine copies; requests go to the least loaded (default 1)\n";

  // Takes `arg` if it is a model flag (reading its value with `value()`); false if it is not one.
  bool Parse(const std::string& arg, const std::function<std::string()>& value) {
    if (arg == "--engine") {
      engine_ = value();
      if (engine_ != "cpu" && engine_ != "turbomind") throw UsageError{"--engine must be cpu or turbomind"};
    } else if (arg == "--device") {
      config_.device = ParseField(value(), arg);
    } else if (arg == "--gpu-memory") {
      config_.gpu_memory = ParseDouble(value(), arg);
    } else if (arg == "--max-batch") {
      config_.max_batch = ParseField(value(), arg);
    } else if (arg == "--max-session-len") {
      config_.max_session_len = ParseField(value(), arg);
    } else if (arg == "--table-dtype") {
      const std::string dtype = value();
      if (dtype != "float32" && dtype != "bfloat16") throw UsageError{"--table-dtype must be float32 or bfloat16"};
      config_.table_bfloat16 = dtype == "bfloat16";
    } else if (arg == "--replicas") {
      config_.replicas = ParseField(value(), arg);
    } else {
      return false;
    }
    return true;
  }

  const std::string& engine() const { return engine_; }

  // The config for `bundle_dir`; its strings point into this object and `bundle_dir`, which
  // must outlive the model's construction (the C API copies what it keeps).
  api::ModelConfig Config(const std::string& bundle_dir) const {
    api::ModelConfig config = config_;
    config.bundle_dir = bundle_dir.c_str();
    config.engine = engine_.c_str();
    return config;
  }

 private:
  std::string engine_ = "cpu";
  api::ModelConfig config_ = api::DefaultModelConfig();
};

// Writes `text` to stdout and flushes it; a failure (a full disk, a closed pipe) is an error, so
// that a program whose output was lost does not exit 0.
inline void WriteStdout(const std::string& text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    const int error = errno;
    throw std::runtime_error(std::string("writing to stdout failed: ") + std::strerror(error));
  }
}

// printf into a std::string.
inline std::string Format(const char* format, ...) __attribute__((format(printf, 1, 2)));
inline std::string Format(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, format, args);
  va_end(args);
  return out;
}

// The programs' main: runs `run`, and turns a usage error into the message, the usage and exit 2,
// any other error into "error: <sentence>" and exit 1.
inline int RunProgram(const char* program, const std::string& usage, int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n\n%s", program, e.message.c_str(), usage.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace cosyfast::tools
