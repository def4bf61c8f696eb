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

# CLI11 (tools/host_flags.h): the host programs' command lines. Not on PyPI; in order:
#   COSYFAST_CLI11_INCLUDE=<dir holding CLI/CLI.hpp> (a cache variable, or the environment
#     variable: .ci/run and the GPU pack unpack Debian's libcli11-dev there, packaging/get_cli11.sh)
#   find_package(CLI11 2.1): a system install (Debian/Ubuntu libcli11-dev, conda's cli11, vcpkg)
#   Debian's libcli11-dev unpacked into the build tree (apt-get download; no install, no root)
#   the release's source from GitHub at configure time (a machine with network and nothing else)
set(COSYFAST_CLI11_INCLUDE "$ENV{COSYFAST_CLI11_INCLUDE}" CACHE PATH "a directory holding CLI/CLI.hpp (empty: find it)")
set(COSYFAST_CLI11_VERSION 2.4.2)
add_library(cosyfast_cli11 INTERFACE IMPORTED)
if(COSYFAST_CLI11_INCLUDE)
  if(NOT EXISTS "${COSYFAST_CLI11_INCLUDE}/CLI/CLI.hpp")
    message(FATAL_ERROR "COSYFAST_CLI11_INCLUDE=${COSYFAST_CLI11_INCLUDE} holds no CLI/CLI.hpp")
  endif()
  set_property(TARGET cosyfast_cli11 PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${COSYFAST_CLI11_INCLUDE}")
  message(STATUS "cosyfast: CLI11 from ${COSYFAST_CLI11_INCLUDE}")
else()
  find_package(CLI11 2.1 CONFIG QUIET)
  if(CLI11_FOUND)
    set_property(TARGET cosyfast_cli11 PROPERTY INTERFACE_LINK_LIBRARIES CLI11::CLI11)
    message(STATUS "cosyfast: CLI11 ${CLI11_VERSION} from ${CLI11_DIR}")
  else()
    # A Debian/Ubuntu machine often reaches its own archive where GitHub is out of reach (this
    # project's machines, CI): libcli11-dev's headers unpacked into the build tree, nothing installed.
    set(_cli11_debian "${CMAKE_BINARY_DIR}/cli11/usr/include")
    find_program(COSYFAST_APT_GET apt-get)
    find_program(COSYFAST_DPKG_DEB dpkg-deb)
    if(NOT EXISTS "${_cli11_debian}/CLI/CLI.hpp" AND NOT FETCHCONTENT_FULLY_DISCONNECTED
       AND COSYFAST_APT_GET AND COSYFAST_DPKG_DEB)
      message(STATUS "cosyfast: CLI11 not installed: unpacking Debian's libcli11-dev into the build tree")
      execute_process(COMMAND bash "${PROJECT_SOURCE_DIR}/packaging/get_cli11.sh" "${CMAKE_BINARY_DIR}/cli11"
                      OUTPUT_QUIET ERROR_QUIET TIMEOUT 180)
    endif()
    if(EXISTS "${_cli11_debian}/CLI/CLI.hpp")
      set_property(TARGET cosyfast_cli11 PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_cli11_debian}")
      message(STATUS "cosyfast: CLI11 from Debian's libcli11-dev, unpacked in ${CMAKE_BINARY_DIR}/cli11")
    elseif(FETCHCONTENT_FULLY_DISCONNECTED)
      message(FATAL_ERROR "cosyfast needs CLI11's headers (the host programs' flags) and may not download: "
                          "apt-get install libcli11-dev, or COSYFAST_CLI11_INCLUDE=<dir holding CLI/CLI.hpp> "
                          "(packaging/get_cli11.sh unpacks Debian's package there)")
    else()
      message(STATUS "cosyfast: CLI11 not installed (apt-get install libcli11-dev, or -DCOSYFAST_CLI11_INCLUDE=DIR "
                     "offline): fetching its ${COSYFAST_CLI11_VERSION} release from GitHub")
      include(FetchContent)
      # SOURCE_SUBDIR names nothing: only download (its headers are used, not its build).
      FetchContent_Declare(cosyfast_cli11
        URL https://github.com/CLIUtils/CLI11/archive/refs/tags/v${COSYFAST_CLI11_VERSION}.tar.gz
        TIMEOUT 120 INACTIVITY_TIMEOUT 30  # offline: fail with the message above rather than hang
        SOURCE_SUBDIR cosyfast-download-only)
      FetchContent_MakeAvailable(cosyfast_cli11)
      set_property(TARGET cosyfast_cli11 PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${cosyfast_cli11_SOURCE_DIR}/include")
    endif()
  endif()
endif()
