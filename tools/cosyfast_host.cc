// cosyfast-host: runs one request on an exported CPU bundle without Python and prints the speech
// tokens. A small host of the C++ API (include/cosyfast/cosyfast.hpp), and the program the tests
// compare with the Python package.
//
// stdout: the tokens, space-separated, on one line. stderr: "finish_reason=<r> tokens=<n>".
// Exit status: 0 done, 1 an error (the message says what), 2 bad usage.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cosyfast/cosyfast.hpp"

namespace {

const char kUsage[] =
    "usage: cosyfast-host BUNDLE_DIR --text IDS [options]\n"
    "\n"
    "Generates CosyVoice2/3 speech tokens for one request on the CPU engine. IDS are\n"
    "comma-separated token ids (\"\" for none).\n"
    "\n"
    "  --text IDS                   text ids to speak (without the prompt text)\n"
    "  --prompt-text IDS            the voice prompt's transcript ids\n"
    "  --prompt-speech IDS          the voice prompt's speech tokens\n"
    "  --seed N                     random seed (default 0)\n"
    "  --top-p X                    nucleus mass (default 0.8)\n"
    "  --top-k N                    nucleus size cap (default 25)\n"
    "  --no-ras                     plain nucleus sampling instead of RAS\n"
    "  --win-size N                 RAS window (default 10)\n"
    "  --tau-r X                    RAS threshold ratio (default 0.1)\n"
    "  --include-repeated           old RAS rule: the re-draw may pick the repeated token\n"
    "  --min-token-text-ratio X     min_len = text length * X (default 2)\n"
    "  --max-token-text-ratio X     max_len = text length * X (default 20)\n"
    "  --min-len N                  fixed min_len\n"
    "  --max-len N                  fixed max_len\n"
    "  --max-session-len N          engine session limit (default 4096)\n"
    "  --table-dtype float32|bfloat16  prompt table storage (default float32)\n"
    "  --replicas N                 engine copies; requests go to the least loaded (default 1)\n"
    "  --stop-after N               stop the request from the token callback after N tokens\n"
    "  --stream                     pull tokens from a streaming request instead of generate()\n"
    "  --info                       print the model's facts to stderr\n"
    "  -h, --help                   this text\n";

struct UsageError {
  std::string message;
};

int64_t ParseInt(const std::string& s, const std::string& flag, int64_t lo, int64_t hi) {
  if (s.empty()) throw UsageError{flag + " needs an integer"};
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end != '\0' || v < lo || v > hi) {
    throw UsageError{flag + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"};
  }
  return v;
}

double ParseDouble(const std::string& s, const std::string& flag) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || errno || *end != '\0') throw UsageError{flag + ": '" + s + "' is not a number"};
  return v;
}

std::vector<int32_t> ParseIds(const std::string& s, const std::string& flag) {
  std::vector<int32_t> ids;
  if (s.empty()) return ids;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    ids.push_back(static_cast<int32_t>(ParseInt(item, flag, std::numeric_limits<int32_t>::min(),
                                                std::numeric_limits<int32_t>::max())));
    if (comma == std::string::npos) return ids;
    start = comma + 1;
  }
}

void PrintTokens(const std::vector<int32_t>& tokens) {
  std::string line;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(tokens[i]);
  }
  std::printf("%s\n", line.c_str());
}

int Run(int argc, char** argv) {
  std::string bundle;
  bool have_text = false, stream = false, info = false;
  int64_t stop_after = -1;
  cosyfast::api::Input input;
  cosyfast::api::Options options = cosyfast::api::DefaultOptions();
  cosyfast::api::ModelConfig config = cosyfast::api::DefaultModelConfig();

  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++i];
    };
    constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "--text") {
      input.text_ids = ParseIds(value(), arg);
      have_text = true;
    } else if (arg == "--prompt-text") {
      input.prompt_text_ids = ParseIds(value(), arg);
    } else if (arg == "--prompt-speech") {
      input.prompt_speech_tokens = ParseIds(value(), arg);
    } else if (arg == "--seed") {
      options.seed = static_cast<uint64_t>(ParseInt(value(), arg, 0, std::numeric_limits<int64_t>::max()));
    } else if (arg == "--top-p") {
      options.top_p = ParseDouble(value(), arg);
    } else if (arg == "--top-k") {
      options.top_k = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--no-ras") {
      options.ras = 0;
    } else if (arg == "--win-size") {
      options.win_size = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--tau-r") {
      options.tau_r = ParseDouble(value(), arg);
    } else if (arg == "--include-repeated") {
      options.exclude_repeated = 0;
    } else if (arg == "--min-token-text-ratio") {
      options.min_token_text_ratio = ParseDouble(value(), arg);
    } else if (arg == "--max-token-text-ratio") {
      options.max_token_text_ratio = ParseDouble(value(), arg);
    } else if (arg == "--min-len") {
      options.min_len = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--max-len") {
      options.max_len = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--max-session-len") {
      config.max_session_len = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--table-dtype") {
      const std::string dtype = value();
      if (dtype != "float32" && dtype != "bfloat16") throw UsageError{"--table-dtype must be float32 or bfloat16"};
      config.table_bfloat16 = dtype == "bfloat16";
    } else if (arg == "--replicas") {
      config.replicas = static_cast<int32_t>(ParseInt(value(), arg, -kIntMax, kIntMax));
    } else if (arg == "--stop-after") {
      stop_after = ParseInt(value(), arg, 1, std::numeric_limits<int64_t>::max());
    } else if (arg == "--stream") {
      stream = true;
    } else if (arg == "--info") {
      info = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError{"unknown option " + arg};
    } else if (bundle.empty()) {
      bundle = arg;
    } else {
      throw UsageError{"more than one bundle directory given ('" + bundle + "', '" + arg + "')"};
    }
  }
  if (bundle.empty()) throw UsageError{"no bundle directory given"};
  if (!have_text) throw UsageError{"--text is required"};

  config.bundle_dir = bundle.c_str();
  cosyfast::api::Model model(config);
  if (info) {
    std::fprintf(stderr, "cosyfast %s: %s, hidden %d, vocab %d, max_session_len %d\n", cosyfast_version(),
                 model.kind().c_str(), model.hidden_size(), model.vocab_size(), model.max_session_len());
  }

  cosyfast::api::Result result;
  if (stream) {
    cosyfast::api::Request request = model.Start(input, options);
    bool stopped = false;
    int32_t token;
    while (!stopped && request.Next(token)) {
      result.tokens.push_back(token);
      stopped = stop_after > 0 && static_cast<int64_t>(result.tokens.size()) >= stop_after;
    }
    if (stopped) request.Cancel();  // (destroying the request would cancel it too)
    result.finish_reason = stopped ? "cancelled" : request.finish_reason();
  } else {
    int64_t seen = 0;
    std::function<bool(int32_t)> on_token;
    if (stop_after > 0) on_token = [&](int32_t) { return ++seen < stop_after; };
    result = model.Generate(input, options, on_token);
  }
  PrintTokens(result.tokens);
  std::fflush(stdout);
  std::fprintf(stderr, "finish_reason=%s tokens=%zu\n", result.finish_reason.c_str(), result.tokens.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "cosyfast-host: %s\n\n%s", e.message.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cosyfast-host: error: %s\n", e.what());
    return 1;
  }
}
