#include "io/json.h"

#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>
#include <vector>

static_assert(NLOHMANN_JSON_VERSION_MAJOR == 3 && NLOHMANN_JSON_VERSION_MINOR >= 11,
              "cosyfast is built and tested with nlohmann/json 3.11 or newer");

namespace cosyfast::io {

namespace {

[[noreturn]] void WrongType(const char* wanted, const Json& got) {
  throw std::runtime_error(std::string("expected ") + wanted + ", got " + JsonTypeName(got));
}

// A limit broken while parsing; thrown from the parser's callback, turned into a sentence below.
struct LimitError {
  std::string what;
};

}  // namespace

Json ParseJson(std::string_view text) {
  // One set of keys per object being parsed: a key seen twice in one object is refused.
  std::vector<std::set<std::string>> keys;
  const Json::parser_callback_t check = [&keys](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) throw LimitError{"nested deeper than " + std::to_string(kMaxJsonDepth)};
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second) {
          throw LimitError{"duplicate key \"" + parsed.get<std::string>() + "\""};
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), check);
  } catch (const LimitError& e) {
    throw std::runtime_error("invalid JSON: " + e.what);
  } catch (const Json::parse_error& e) {
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line L, column C: <what>"
    std::string what = e.what();
    const size_t at = what.find(" at line ");
    what = at == std::string::npos ? what : what.substr(at + 4);
    throw std::runtime_error("invalid JSON at byte " + std::to_string(e.byte) + " (" + what + ")");
  } catch (const Json::exception& e) {
    // Anything else nlohmann refuses while parsing (a number too large for a double: out_of_range.406).
    std::string what = e.what();
    const size_t end = what.find("] ");
    throw std::runtime_error("invalid JSON: " + (end == std::string::npos ? what : what.substr(end + 2)));
  }
}

const char* JsonTypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "a number";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    default: return "unknown";
  }
}

int64_t JsonInt64(const Json& v) {
  if (!v.is_number()) WrongType("an integer", v);
  if (v.is_number_float()) throw std::runtime_error("expected an integer, got " + v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    throw std::runtime_error("integer " + v.dump() + " is out of range");
  }
  return v.get<int64_t>();
}

double JsonDouble(const Json& v) {
  if (!v.is_number()) WrongType("a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d)) throw std::runtime_error("number " + v.dump() + " is out of range for a double");
  return d;
}

const std::string& JsonString(const Json& v) {
  if (!v.is_string()) WrongType("a string", v);
  return v.get_ref<const std::string&>();
}

const Json& JsonArray(const Json& v) {
  if (!v.is_array()) WrongType("an array", v);
  return v;
}

const Json* JsonFind(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

}  // namespace cosyfast::io
