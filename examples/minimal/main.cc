// minimal BUNDLE_DIR TEXT_ID...: speech tokens for the text ids on a bundle written by
// `cosyfast export-bundle`, seed 7, at most 40 tokens, printed space-separated on one line.
#include <cstdio>
#include <cstdlib>

#include "cosyfast/cosyfast.hpp"

int main(int argc, char** argv) try {
  if (argc < 3) return std::fprintf(stderr, "usage: minimal BUNDLE_DIR TEXT_ID...\n"), 2;
  cosyfast::api::Input input;
  for (int i = 2; i < argc; ++i) input.text_ids.push_back(std::atoi(argv[i]));
  cosyfast::api::Options options = cosyfast::api::DefaultOptions();
  options.seed = 7;
  options.max_len = 40;
  cosyfast::api::Model model(argv[1]);
  for (int32_t token : model.Generate(input, options).tokens) std::printf("%d ", token);
  std::printf("\n");
} catch (const cosyfast::api::Error& e) {
  return std::fprintf(stderr, "minimal: %s\n", e.what()), 1;
}
