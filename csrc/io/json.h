// JSON for the two documents a bundle holds, its config.json and the header of its safetensors
// file: parsed by nlohmann/json (pinned, header-only: pyproject.toml's build requirement
// nlohmann-json, or a system install; cmake/deps.cmake). What this file adds is what those
// readers need on top of it: the limits (nesting depth, no duplicate keys: safetensors forbids
// them, and a config with two values for one key is ambiguous) and the sentences their errors
// are made of.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace cosyfast::io {

// Objects keep their members in file order.
using Json = nlohmann::ordered_json;

// The deepest nesting of arrays and objects a document may have.
constexpr int kMaxJsonDepth = 64;

// Parses a whole document (surrounding whitespace allowed). Throws std::runtime_error
// "invalid JSON at byte N (line L, column C: <what>)" for malformed text, and "invalid JSON: ..."
// for nesting deeper than kMaxJsonDepth or a duplicate key.
Json ParseJson(std::string_view text);

// "null", "a boolean", "a number", "a string", "an array" or "an object".
const char* JsonTypeName(const Json& v);

// Typed reads. Each throws std::runtime_error "expected <type>, got <type>" when `v` has another
// type; JsonInt64 also when `v` is not an integer within int64, JsonDouble when it is not finite.
int64_t JsonInt64(const Json& v);
double JsonDouble(const Json& v);
const std::string& JsonString(const Json& v);
const Json& JsonArray(const Json& v);  // `v` itself, checked to be an array

// The member `key` of an object, or nullptr when absent (or when `obj` is not an object).
const Json* JsonFind(const Json& obj, std::string_view key);

}  // namespace cosyfast::io
