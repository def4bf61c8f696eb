// cosyfast-host: runs one request on an exported bundle without Python and prints the speech
// tokens. A small host of the C++ API (include/cosyfast/cosyfast.hpp), and the program the tests
// compare with the Python package. It runs on either engine of the C API: "cpu" (default), or
// "turbomind" where cosyfast was built with the GPU engine (--engine, --device, --gpu-memory).
//
// stdout: the tokens, space-separated, on one line. stderr: "finish_reason=<r> tokens=<n>".
// Exit status: 0 done, 1 an error (the message says what), 2 bad usage.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cosyfast/cosyfast.hpp"
#include "host_flags.h"

namespace {

using cosyfast::tools::ModelFlags;
using cosyfast::tools::ParseDouble;
using cosyfast::tools::ParseField;
using cosyfast::tools::ParseIds;
using cosyfast::tools::ParseInt;
using cosyfast::tools::UsageError;

const std::string kUsage = std::string(
    "usage: cosyfast-host BUNDLE_DIR --text IDS [options]\n"
    "\n"
    "Generates CosyVoice2/3 speech tokens for one request, on the CPU engine or (--engine turbomind,\n"
    "a GPU build) on the GPU. IDS are comma-separated token ids (\"\" for none).\n"
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
    "  --max-len N                  fixed max_len\n") +
    ModelFlags::kUsage +
    "  --stop-after N               stop the request from the token callback after N tokens\n"
    "  --stream                     pull tokens from a streaming request instead of generate()\n"
    "  --info                       print the model's facts to stderr\n"
    "  -h, --help                   this text\n";

void PrintTokens(const std::vector<int32_t>& tokens) {
  std::string line;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(tokens[i]);
  }
  cosyfast::tools::WriteStdout(line + "\n");
}

int Run(int argc, char** argv) {
  std::string bundle;
  bool have_text = false, stream = false, info = false;
  int64_t stop_after = -1;
  cosyfast::api::Input input;
  cosyfast::api::Options options = cosyfast::api::DefaultOptions();
  ModelFlags model_flags;

  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      cosyfast::tools::WriteStdout(kUsage);
      return 0;
    } else if (model_flags.Parse(arg, value)) {
      continue;
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
      options.top_k = ParseField(value(), arg);
    } else if (arg == "--no-ras") {
      options.ras = 0;
    } else if (arg == "--win-size") {
      options.win_size = ParseField(value(), arg);
    } else if (arg == "--tau-r") {
      options.tau_r = ParseDouble(value(), arg);
    } else if (arg == "--include-repeated") {
      options.exclude_repeated = 0;
    } else if (arg == "--min-token-text-ratio") {
      options.min_token_text_ratio = ParseDouble(value(), arg);
    } else if (arg == "--max-token-text-ratio") {
      options.max_token_text_ratio = ParseDouble(value(), arg);
    } else if (arg == "--min-len") {
      options.min_len = ParseField(value(), arg);
    } else if (arg == "--max-len") {
      options.max_len = ParseField(value(), arg);
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

  cosyfast::api::Model model(model_flags.Config(bundle));
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
  std::fprintf(stderr, "finish_reason=%s tokens=%zu\n", result.finish_reason.c_str(), result.tokens.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return cosyfast::tools::RunProgram("cosyfast-host", kUsage, Run, argc, argv); }
