// Command-line pieces shared by the host programs (cosyfast_host.cc, cosyfast_load.cc): the parser
// (CLI11, with this project's usage line and error sentences), id-list parsing, the model flags
// (so that both programs spell and check them the same way), checked output and the main wrapper.
// Values the C API checks (ranges of the config fields) are passed through: its sentence names the
// problem; only what must be mapped to a field (a name to an enum) is checked here.
#pragma once

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "cosyfast/cosyfast.hpp"

namespace cosyfast::tools {

// A mistake in the command line: the program prints it with its usage and exits 2.
struct UsageError {
  std::string message;
};

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Values in this project's own formats (id lists, cosyfast-load's requests file), which CLI11
// hands over as strings: `name` is the flag or field named in the error.
inline int64_t ParseInt(const std::string& s, const std::string& name, int64_t lo, int64_t hi) {
  if (s.empty()) throw UsageError{name + " needs an integer"};
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end != '\0' || v < lo || v > hi) {
    throw UsageError{name + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"};
  }
  return v;
}

// An int32 option field: any int32, so that the C API's own check names a bad value.
inline int32_t ParseField(const std::string& s, const std::string& name) {
  return static_cast<int32_t>(ParseInt(s, name, -kInt32Max, kInt32Max));
}

inline double ParseDouble(const std::string& s, const std::string& name) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || errno || *end != '\0') throw UsageError{name + ": '" + s + "' is not a number"};
  return v;
}

// Comma-separated ids; "" is none.
inline std::vector<int32_t> ParseIds(const std::string& s, const std::string& name) {
  std::vector<int32_t> ids;
  if (s.empty()) return ids;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    ids.push_back(static_cast<int32_t>(ParseInt(item, name, std::numeric_limits<int32_t>::min(), kInt32Max)));
    if (comma == std::string::npos) return ids;
    start = comma + 1;
  }
}

// The usage line is the programs' own ("usage: NAME SYNOPSIS"); CLI11 lists the options below it.
class UsageFormatter : public CLI::Formatter {
 public:
  explicit UsageFormatter(std::string synopsis) : synopsis_(std::move(synopsis)) { column_width(32); }
  std::string make_usage(const CLI::App* app, std::string) const override {
    return "usage: " + app->get_name() + " " + synopsis_ + "\n";
  }

 private:
  std::string synopsis_;
};

// A program's parser: CLI11's App with the project's usage line and -h/--help.
inline std::unique_ptr<CLI::App> MakeApp(const std::string& program, const std::string& synopsis,
                                         const std::string& description) {
  auto app = std::make_unique<CLI::App>("", program);
  app->formatter(std::make_shared<UsageFormatter>(synopsis));
  app->footer("\n" + description);  // after the options: the help starts with the usage line
  app->set_help_flag("-h,--help", "this text");
  // A flag given twice takes its last value (a script can append an override).
  app->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  return app;
}

// The flags that make the model (cosyfast_model_create's config), one spelling for every host.
class ModelFlags {
 public:
  void Add(CLI::App& app) {
    app.add_option("--engine", engine_, "the engine (turbomind needs a GPU build)")
        ->check(CLI::IsMember({"cpu", "turbomind"}))->capture_default_str();
    app.add_option("--device", config_.device, "turbomind: the CUDA device of the first replica")
        ->capture_default_str();
    app.add_option("--gpu-memory", config_.gpu_memory,
                   "turbomind: GPU memory per engine, GB (> 1) or a fraction (<= 1) of the GPU "
                   "(0: what max-batch sessions need)")->capture_default_str();
    app.add_option("--max-batch", config_.max_batch, "most sessions stepped together")->capture_default_str();
    app.add_option("--max-session-len", config_.max_session_len, "engine session limit")->capture_default_str();
    app.add_option("--table-dtype", table_dtype_, "prompt table storage")
        ->check(CLI::IsMember({"float32", "bfloat16"}))->capture_default_str();
    app.add_option("--replicas", config_.replicas, "engine copies; requests go to the least loaded")
        ->capture_default_str();
  }

  const std::string& engine() const { return engine_; }

  // The config for `bundle_dir`; its strings point into this object and `bundle_dir`, which
  // must outlive the model's construction (the C API copies what it keeps).
  api::ModelConfig Config(const std::string& bundle_dir) const {
    api::ModelConfig config = config_;
    config.bundle_dir = bundle_dir.c_str();
    config.engine = engine_.c_str();
    config.table_bfloat16 = table_dtype_ == "bfloat16";
    return config;
  }

 private:
  std::string engine_ = "cpu";
  std::string table_dtype_ = "float32";
  api::ModelConfig config_ = api::DefaultModelConfig();
};

// Parses argv with `app`: --help is thrown on (RunProgram prints it), a mistake is thrown as a
// UsageError carrying CLI11's sentence.
inline void Parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    throw;
  } catch (const CLI::ParseError& e) {
    throw UsageError{e.what()};
  }
}

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

// The programs' main: runs `run` with the program's parser; --help prints the usage to stdout
// (exit 0), a usage error the message and the usage to stderr (exit 2), any other error
// "error: <sentence>" (exit 1).
template <typename Run>
int RunProgram(const char* program, const CLI::App& app, Run run) {
  try {
    return run();
  } catch (const CLI::CallForHelp&) {
    try {
      WriteStdout(app.help());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: error: %s\n", program, e.what());
      return 1;
    }
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n\n%s", program, e.message.c_str(), app.help().c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace cosyfast::tools
