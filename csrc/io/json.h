// A small JSON reader (RFC 8259) for the two documents a bundle holds: its config.json and the
// header of its safetensors file. Read-only: parse a text into a tree and query it. No writer, no
// comments or trailing commas, objects keep their members in file order, duplicate keys are an
// error (safetensors forbids them, and a config with two values for one key is ambiguous).
//
// Numbers keep their source text, so an integer such as a data offset reads back exactly
// (AsInt64) instead of through a double; AsDouble converts with std::from_chars, which does not
// depend on the C locale.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cosyfast::io {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Member = std::pair<std::string, Json>;

  // Parses a whole document (surrounding whitespace allowed). Throws std::runtime_error
  // "invalid JSON at byte N: <what>" for malformed text, nesting deeper than 64 or a duplicate key.
  static Json Parse(std::string_view text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  static const char* TypeName(Type type);

  // Each accessor throws std::runtime_error when the value has another type (or, for AsInt64,
  // is not an integer within int64).
  bool AsBool() const;
  double AsDouble() const;
  int64_t AsInt64() const;
  const std::string& AsString() const;
  const std::vector<Json>& AsArray() const;
  const std::vector<Member>& AsObject() const;

  // The member `key` of an object, or nullptr when absent (or when this is not an object).
  const Json* Find(std::string_view key) const;

 private:
  class Parser;

  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string text_;  // a string's value, or a number's source text
  std::vector<Json> array_;
  std::vector<Member> object_;
};

}  // namespace cosyfast::io
