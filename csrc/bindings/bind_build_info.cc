// cosyfast._core.build_info(): how this extension was compiled, for `cosyfast info` and bug
// reports. Everything comes from the preprocessor, so it describes this binary, not the tree.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/bindings.h"

namespace py = pybind11;

// The patch level may be a token such as 0.dev1, so the version is stringified, not computed.
#define COSYFAST_STR_(x) #x
#define COSYFAST_STR(x) COSYFAST_STR_(x)

namespace cosyfast::python {
namespace {

std::string Compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

// C++20 is 202002L, C++23 202302L, ...: the year, as "C++20".
std::string CxxStandard() {
  const long year = (__cplusplus / 100) % 100;
  return "C++" + std::to_string(year) + " (" + std::to_string(__cplusplus) + "L)";
}

// The CMake build type when the build passes it (COSYFAST_BUILD_TYPE); otherwise what the
// preprocessor can tell: optimised or not, assertions on or off.
std::string BuildType() {
#if defined(COSYFAST_BUILD_TYPE)
  return COSYFAST_BUILD_TYPE;
#elif defined(NDEBUG) && defined(__OPTIMIZE__)
  return "optimized, NDEBUG (Release-like)";
#elif defined(__OPTIMIZE__)
  return "optimized, asserts on";
#else
  return "unoptimized (Debug-like)";
#endif
}

py::dict BuildInfo() {
  py::dict d;
  d["compiler"] = Compiler();
  d["cxx_standard"] = CxxStandard();
  d["build_type"] = BuildType();
#if defined(_OPENMP)
  d["openmp"] = true;
  d["openmp_version"] = static_cast<long>(_OPENMP);
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
#endif
#if defined(COSYFAST_WITH_TURBOMIND) && COSYFAST_WITH_TURBOMIND
  d["with_turbomind"] = true;
#else
  d["with_turbomind"] = false;
#endif
#if defined(COSYFAST_LMDEPLOY_VERSION)
  d["lmdeploy_version"] = std::string(COSYFAST_LMDEPLOY_VERSION);
#else
  d["lmdeploy_version"] = py::none();
#endif
#if defined(COSYFAST_VERSION)
  d["version"] = std::string(COSYFAST_VERSION);
#else
  d["version"] = py::none();
#endif
  d["pybind11_version"] = COSYFAST_STR(PYBIND11_VERSION_MAJOR) "." COSYFAST_STR(
      PYBIND11_VERSION_MINOR) "." COSYFAST_STR(PYBIND11_VERSION_PATCH);
  return d;
}

}  // namespace

void BindBuildInfo(py::module_& m) {
  m.def("build_info", &BuildInfo,
        "How this extension was compiled: compiler, C++ standard, build type, OpenMP, whether "
        "TurboMind was compiled in (COSYFAST_WITH_TURBOMIND) and the lmdeploy version it was "
        "built from");
}

}  // namespace cosyfast::python
