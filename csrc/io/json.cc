#include "io/json.h"

#include <charconv>
#include <cmath>
#include <stdexcept>
#include <system_error>

namespace cosyfast::io {

// Recursive descent over the text; `pos_` is the byte offset quoted in errors.
class Json::Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json Document() {
    Json value = Value(0);
    SkipSpace();
    if (pos_ != text_.size()) Fail("unexpected text after the document");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }

  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }

  void Expect(char c) {
    if (Peek() != c) {
      Fail(AtEnd() ? std::string("unexpected end, expected '") + c + "'"
                   : std::string("expected '") + c + "'");
    }
    ++pos_;
  }

  void Literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) Fail("unexpected character");
    pos_ += word.size();
  }

  Json Value(int depth) {
    if (depth > kMaxDepth) Fail("nesting deeper than " + std::to_string(kMaxDepth));
    SkipSpace();
    if (AtEnd()) Fail("unexpected end, expected a value");
    Json v;
    switch (Peek()) {
      case '{': Object(v, depth); break;
      case '[': Array(v, depth); break;
      case '"':
        v.type_ = Type::kString;
        v.text_ = String();
        break;
      case 't': Literal("true"); v.type_ = Type::kBool; v.bool_ = true; break;
      case 'f': Literal("false"); v.type_ = Type::kBool; v.bool_ = false; break;
      case 'n': Literal("null"); v.type_ = Type::kNull; break;
      default:
        v.type_ = Type::kNumber;
        v.text_ = Number();
    }
    return v;
  }

  void Object(Json& v, int depth) {
    v.type_ = Type::kObject;
    Expect('{');
    SkipSpace();
    if (Peek() == '}') {
      ++pos_;
      return;
    }
    while (true) {
      SkipSpace();
      if (Peek() != '"') Fail("expected a string key");
      const size_t key_pos = pos_;
      std::string key = String();
      for (const Member& m : v.object_) {
        if (m.first == key) {
          pos_ = key_pos;
          Fail("duplicate key \"" + key + "\"");
        }
      }
      SkipSpace();
      Expect(':');
      Json value = Value(depth + 1);
      v.object_.emplace_back(std::move(key), std::move(value));
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      Expect('}');
      return;
    }
  }

  void Array(Json& v, int depth) {
    v.type_ = Type::kArray;
    Expect('[');
    SkipSpace();
    if (Peek() == ']') {
      ++pos_;
      return;
    }
    while (true) {
      v.array_.push_back(Value(depth + 1));
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      Expect(']');
      return;
    }
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t Hex4() {
    if (text_.size() - pos_ < 4) Fail("unexpected end in a \\u escape");
    uint32_t cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= c - '0';
      else if (c >= 'a' && c <= 'f') cp |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') cp |= c - 'A' + 10;
      else Fail("bad hex digit in a \\u escape");
    }
    return cp;
  }

  std::string String() {
    Expect('"');
    std::string out;
    while (true) {
      if (AtEnd()) Fail("unterminated string");
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in a string");
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (AtEnd()) Fail("unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a high surrogate must pair with a low one
            if (text_.substr(pos_, 2) != "\\u") Fail("unpaired surrogate in a \\u escape");
            pos_ += 2;
            const uint32_t low = Hex4();
            if (low < 0xDC00 || low >= 0xE000) Fail("unpaired surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            Fail("unpaired surrogate in a \\u escape");
          }
          AppendUtf8(out, cp);
          break;
        }
        default: --pos_; Fail("bad escape in a string");
      }
    }
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, returned as written.
  std::string Number() {
    const size_t start = pos_;
    auto digits = [this] {
      const size_t from = pos_;
      while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++pos_;
      return pos_ - from;
    };
    if (Peek() == '-') ++pos_;
    if (Peek() == '0') {
      ++pos_;
    } else if (digits() == 0) {
      Fail("unexpected character");
    }
    if (Peek() == '.') {
      ++pos_;
      if (digits() == 0) Fail("expected a digit after the decimal point");
    }
    if (Peek() == 'e' || Peek() == 'E') {
      ++pos_;
      if (Peek() == '+' || Peek() == '-') ++pos_;
      if (digits() == 0) Fail("expected a digit in the exponent");
    }
    return std::string(text_.substr(start, pos_ - start));
  }

  std::string_view text_;
  size_t pos_ = 0;
};

Json Json::Parse(std::string_view text) { return Parser(text).Document(); }

const char* Json::TypeName(Type type) {
  switch (type) {
    case Type::kNull: return "null";
    case Type::kBool: return "a boolean";
    case Type::kNumber: return "a number";
    case Type::kString: return "a string";
    case Type::kArray: return "an array";
    case Type::kObject: return "an object";
  }
  return "unknown";
}

namespace {
[[noreturn]] void WrongType(const char* wanted, Json::Type got) {
  throw std::runtime_error(std::string("expected ") + wanted + ", got " + Json::TypeName(got));
}
}  // namespace

bool Json::AsBool() const {
  if (type_ != Type::kBool) WrongType("a boolean", type_);
  return bool_;
}

double Json::AsDouble() const {
  if (type_ != Type::kNumber) WrongType("a number", type_);
  double v = 0;
  const auto r = std::from_chars(text_.data(), text_.data() + text_.size(), v);
  if (r.ec != std::errc() || r.ptr != text_.data() + text_.size() || !std::isfinite(v)) {
    throw std::runtime_error("number " + text_ + " is out of range for a double");
  }
  return v;
}

int64_t Json::AsInt64() const {
  if (type_ != Type::kNumber) WrongType("an integer", type_);
  int64_t v = 0;
  const auto r = std::from_chars(text_.data(), text_.data() + text_.size(), v);
  if (r.ec == std::errc::result_out_of_range) throw std::runtime_error("integer " + text_ + " is out of range");
  if (r.ec != std::errc() || r.ptr != text_.data() + text_.size()) {
    throw std::runtime_error("expected an integer, got " + text_);
  }
  return v;
}

const std::string& Json::AsString() const {
  if (type_ != Type::kString) WrongType("a string", type_);
  return text_;
}

const std::vector<Json>& Json::AsArray() const {
  if (type_ != Type::kArray) WrongType("an array", type_);
  return array_;
}

const std::vector<Json::Member>& Json::AsObject() const {
  if (type_ != Type::kObject) WrongType("an object", type_);
  return object_;
}

const Json* Json::Find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const Member& m : object_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

}  // namespace cosyfast::io
