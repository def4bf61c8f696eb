// libFuzzer target for the JSON reader (csrc/io/json.h): Json::Parse on the raw input, then every
// accessor on every node of the tree. A document that parses is written back out (below) and
// parsed again, which must give the same tree: strings, escapes and numbers survive a round trip.
// Malformed text must end in std::runtime_error; anything else (a crash, a sanitizer report, an
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

void Touch(const Json& v) {
  (void)Json::TypeName(v.type());
  try { (void)v.AsBool(); } catch (const std::runtime_error&) {}
  try { (void)v.AsDouble(); } catch (const std::runtime_error&) {}
  try { (void)v.AsInt64(); } catch (const std::runtime_error&) {}
  try { (void)v.AsString(); } catch (const std::runtime_error&) {}
  (void)v.Find("format");
  if (v.is_array()) {
    for (const Json& e : v.AsArray()) Touch(e);
  } else if (v.is_object()) {
    for (const auto& [key, value] : v.AsObject()) {
      if (v.Find(key) != &value) std::abort();  // keys are unique, so Find returns this member
      Touch(value);
    }
  }
}

void AppendString(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

void Write(std::string& out, const Json& v) {
  switch (v.type()) {
    case Json::Type::kNull: out += "null"; break;
    case Json::Type::kBool: out += v.AsBool() ? "true" : "false"; break;
    case Json::Type::kNumber: {
      // A number keeps its source text; AsInt64/AsDouble only read it. Recover the text by
      // parsing it back: an integer round-trips through AsInt64, anything else through %.17g.
      try {
        out += std::to_string(v.AsInt64());
      } catch (const std::runtime_error&) {
        try {
          char buf[40];
          std::snprintf(buf, sizeof buf, "%.17g", v.AsDouble());
          out += buf;
        } catch (const std::runtime_error&) {
          out += "0";  // out of range for a double: compared by type only
        }
      }
      break;
    }
    case Json::Type::kString: AppendString(out, v.AsString()); break;
    case Json::Type::kArray: {
      out += '[';
      bool first = true;
      for (const Json& e : v.AsArray()) {
        if (!first) out += ',';
        first = false;
        Write(out, e);
      }
      out += ']';
      break;
    }
    case Json::Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [key, value] : v.AsObject()) {
        if (!first) out += ',';
        first = false;
        AppendString(out, key);
        out += ':';
        Write(out, value);
      }
      out += '}';
      break;
    }
  }
}

void Same(const Json& a, const Json& b) {
  if (a.type() != b.type()) std::abort();
  switch (a.type()) {
    case Json::Type::kBool: if (a.AsBool() != b.AsBool()) std::abort(); break;
    case Json::Type::kString: if (a.AsString() != b.AsString()) std::abort(); break;
    case Json::Type::kArray: {
      const auto &x = a.AsArray(), &y = b.AsArray();
      if (x.size() != y.size()) std::abort();
      for (size_t i = 0; i < x.size(); ++i) Same(x[i], y[i]);
      break;
    }
    case Json::Type::kObject: {
      const auto &x = a.AsObject(), &y = b.AsObject();
      if (x.size() != y.size()) std::abort();
      for (size_t i = 0; i < x.size(); ++i) {
        if (x[i].first != y[i].first) std::abort();
        Same(x[i].second, y[i].second);
      }
      break;
    }
    default: break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Json root;
  try {
    root = Json::Parse(text);
  } catch (const std::runtime_error&) {
    return 0;  // malformed: refused with a sentence, as it should be
  }
  Touch(root);
  std::string again;
  Write(again, root);
  Json reparsed;
  try {
    reparsed = Json::Parse(again);
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "round trip failed: %s\nwritten: %s\n", e.what(), again.c_str());
    std::abort();
  }
  Same(root, reparsed);
  return 0;
}
