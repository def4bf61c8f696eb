// libFuzzer target for the JSON layer (csrc/io/json.h over nlohmann/json): ParseJson on the raw
// input, then every typed read on every node of the tree. A document that parses is written back
// out (nlohmann's dump) and parsed again, which must give the same tree: strings, escapes and
// numbers survive a round trip, and file order is kept. Malformed text, a duplicate key or too
// deep a nesting must end in std::runtime_error; anything else (a crash, a sanitizer report, an
// uncaught exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "io/json.h"

using cosyfast::io::Json;

namespace {

void Touch(const Json& v, int depth) {
  if (depth > cosyfast::io::kMaxJsonDepth) std::abort();  // the parser let too deep a document through
  (void)cosyfast::io::JsonTypeName(v);
  try { (void)cosyfast::io::JsonInt64(v); } catch (const std::runtime_error&) {}
  try { (void)cosyfast::io::JsonDouble(v); } catch (const std::runtime_error&) {}
  try { (void)cosyfast::io::JsonString(v); } catch (const std::runtime_error&) {}
  try { (void)cosyfast::io::JsonArray(v); } catch (const std::runtime_error&) {}
  (void)cosyfast::io::JsonFind(v, "format");
  if (v.is_array()) {
    for (const Json& e : v) Touch(e, depth + 1);
  } else if (v.is_object()) {
    for (const auto& member : v.items()) {
      // keys are unique, so JsonFind returns this member
      if (cosyfast::io::JsonFind(v, member.key()) != &member.value()) std::abort();
      Touch(member.value(), depth + 1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Json root;
  try {
    root = cosyfast::io::ParseJson(text);
  } catch (const std::runtime_error&) {
    return 0;  // malformed: refused with a sentence, as it should be
  }
  Touch(root, 0);
  const std::string again = root.dump();
  Json reparsed;
  try {
    reparsed = cosyfast::io::ParseJson(again);
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "round trip failed: %s\nwritten: %s\n", e.what(), again.c_str());
    std::abort();
  }
  if (reparsed != root || reparsed.dump() != again) {
    std::fprintf(stderr, "round trip changed the tree\nwritten: %s\nread back: %s\n", again.c_str(),
                 reparsed.dump().c_str());
    std::abort();
  }
  return 0;
}
