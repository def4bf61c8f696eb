// cosyfast-host: runs one request on an exported bundle without Python and prints the speech
// tokens. A small host of the C++ API (include/cosyfast/cosyfast.hpp), and the program the tests
// compare with the Python package. It runs on either engine of the C API: "cpu" (default), or
// "turbomind" where cosyfast was built with the GPU engine (--engine, --device, --gpu-memory).
//
// stdout: the tokens, space-separated, on one line. stderr: "finish_reason=<r> tokens=<n>".
// Exit status: 0 done, 1 an error (the message says what), 2 bad usage.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cosyfast/cosyfast.hpp"
#include "host_flags.h"

namespace {

namespace tools = cosyfast::tools;

// The command line, read into the C API's own option structs (their defaults are the C API's).
struct Args {
  std::string bundle, text, prompt_text, prompt_speech;
  cosyfast::api::Options options = cosyfast::api::DefaultOptions();
  bool no_ras = false, include_repeated = false, stream = false, info = false;
  int64_t stop_after = -1;
  tools::ModelFlags model;
};

std::unique_ptr<CLI::App> MakeCommandLine(Args& a) {
  auto app = tools::MakeApp("cosyfast-host", "BUNDLE_DIR --text IDS [options]",
                            "Generates CosyVoice2/3 speech tokens for one request, on the CPU engine or (--engine "
                            "turbomind, a GPU build) on the GPU. IDS are comma-separated token ids (\"\" for none).");
  app->add_option("BUNDLE_DIR", a.bundle, "the exported bundle (cosyfast export-bundle)")->required();
  app->add_option("--text", a.text, "text ids to speak (without the prompt text)")->required();
  app->add_option("--prompt-text", a.prompt_text, "the voice prompt's transcript ids");
  app->add_option("--prompt-speech", a.prompt_speech, "the voice prompt's speech tokens");
  cosyfast::api::Options& o = a.options;
  app->add_option("--seed", o.seed, "random seed")->capture_default_str();
  app->add_option("--top-p", o.top_p, "nucleus mass")->capture_default_str();
  app->add_option("--top-k", o.top_k, "nucleus size cap")->capture_default_str();
  app->add_flag("--no-ras", a.no_ras, "plain nucleus sampling instead of RAS");
  app->add_option("--win-size", o.win_size, "RAS window")->capture_default_str();
  app->add_option("--tau-r", o.tau_r, "RAS threshold ratio")->capture_default_str();
  app->add_flag("--include-repeated", a.include_repeated, "old RAS rule: the re-draw may pick the repeated token");
  app->add_option("--min-token-text-ratio", o.min_token_text_ratio, "min_len = text length * X")->capture_default_str();
  app->add_option("--max-token-text-ratio", o.max_token_text_ratio, "max_len = text length * X")->capture_default_str();
  app->add_option("--min-len", o.min_len, "fixed min_len (-1: from the ratio)")->capture_default_str();
  app->add_option("--max-len", o.max_len, "fixed max_len (-1: from the ratio)")->capture_default_str();
  a.model.Add(*app);
  app->add_option("--stop-after", a.stop_after, "stop the request from the token callback after N tokens")
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
  app->add_flag("--stream", a.stream, "pull tokens from a streaming request instead of generate()");
  app->add_flag("--info", a.info, "print the model's facts to stderr");
  return app;
}

void PrintTokens(const std::vector<int32_t>& tokens) {
  std::string line;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(tokens[i]);
  }
  tools::WriteStdout(line + "\n");
}

int Run(Args& a) {
  cosyfast::api::Input input;
  input.text_ids = tools::ParseIds(a.text, "--text");
  input.prompt_text_ids = tools::ParseIds(a.prompt_text, "--prompt-text");
  input.prompt_speech_tokens = tools::ParseIds(a.prompt_speech, "--prompt-speech");
  cosyfast::api::Options options = a.options;
  if (a.no_ras) options.ras = 0;
  if (a.include_repeated) options.exclude_repeated = 0;

  cosyfast::api::Model model(a.model.Config(a.bundle));
  if (a.info) {
    std::fprintf(stderr, "cosyfast %s: %s, hidden %d, vocab %d, max_session_len %d\n", cosyfast_version(),
                 model.kind().c_str(), model.hidden_size(), model.vocab_size(), model.max_session_len());
  }

  cosyfast::api::Result result;
  const int64_t stop_after = a.stop_after;
  if (a.stream) {
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

int main(int argc, char** argv) {
  Args a;
  const auto app = MakeCommandLine(a);
  return tools::RunProgram("cosyfast-host", *app, [&] {
    tools::Parse(*app, argc, argv);
    return Run(a);
  });
}
