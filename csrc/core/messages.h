// Sentences for errors and ToString(). Built with snprintf and std::string, not iostreams:
// beside the GPU image's torch, formatting through a std::ostringstream crashed the process.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace cosyfast {

// Throws std::invalid_argument(what) unless `ok`: the one way options and inputs are refused.
inline void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// A number as Python would print it in a message: shortest round-trip form ("0.8", "1e+06").
inline std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  // Prefer the shortest representation that reads back to the same double.
  for (int precision = 1; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof shorter, "%.*g", precision, v);
    if (std::strtod(shorter, nullptr) == v) return shorter;
  }
  return buf;
}

// The same for a float32 value (the shortest form that reads back to the same float).
inline std::string Num(float v) {
  char buf[32];
  for (int precision = 1; precision < 9; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, static_cast<double>(v));
    if (std::strtof(buf, nullptr) == v) return buf;
  }
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

inline std::string Bool(bool v) { return v ? "true" : "false"; }

}  // namespace cosyfast
