# Header-only libraries the C++ side uses instead of code of its own. No GitHub at build time:
# CI and the GPU machines reach only PyPI and Debian's archive (or nothing).
#
# nlohmann/json (csrc/io/json.h): the target cosyfast_json. Pinned by pyproject.toml's build
# requirement nlohmann-json==3.12.0 (PyPI's header package), which pip installs for every build and
# the Python running CMake imports; else a system install (Debian's nlohmann-json3-dev, conda's
# nlohmann_json) through find_package; COSYFAST_JSON_INCLUDE=<dir holding nlohmann/json.hpp>
# overrides both.
set(COSYFAST_JSON_INCLUDE "" CACHE PATH "a directory holding nlohmann/json.hpp (empty: find it)")
set(_json_include "${COSYFAST_JSON_INCLUDE}")
if(NOT _json_include)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util, os; s = importlib.util.find_spec('nlohmann_json'); print(os.path.join(list(s.submodule_search_locations)[0], 'include') if s else '')"
    OUTPUT_VARIABLE _json_include OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
add_library(cosyfast_json INTERFACE IMPORTED)
if(_json_include AND EXISTS "${_json_include}/nlohmann/json.hpp")
  cosyfast_stable_include(cosyfast_json "${_json_include}" nlohmann_json)
  message(STATUS "cosyfast: nlohmann/json from ${_json_include}")
else()
  find_package(nlohmann_json 3.11 CONFIG QUIET)
  if(NOT nlohmann_json_FOUND)
    message(FATAL_ERROR "cosyfast needs nlohmann/json (header-only): pip install nlohmann-json==3.12.0 in the "
                        "Python that builds (pip's isolated builds do this themselves), or apt-get install "
                        "nlohmann-json3-dev, or -DCOSYFAST_JSON_INCLUDE=<dir holding nlohmann/json.hpp>")
  endif()
  set_property(TARGET cosyfast_json PROPERTY INTERFACE_LINK_LIBRARIES nlohmann_json::nlohmann_json)
  message(STATUS "cosyfast: nlohmann/json ${nlohmann_json_VERSION} from ${nlohmann_json_DIR}")
endif()
