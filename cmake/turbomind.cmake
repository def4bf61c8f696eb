# The GPU engine (COSYFAST_TURBOMIND=ON): TurboMind built from lmdeploy's source with cosyfast's
# patch (third_party/), linked into libcosyfast_engine.so. Provides the targets:
#   cosyfast_turbomind_headers  what code that calls TurboMind compiles with (its include paths and
#                               definitions) and the CUDA runtime, without TurboMind's libraries
#   cosyfast_turbomind          the same plus TurboMind's and xgrammar's static libraries: linked
#                               by the engine library only
#   cosyfast_tm_bindings        lmdeploy's Python binding sources (objects for cosyfast._core)
# the function cosyfast_link_what_objects_need(), and sets COSYFAST_LMDEPLOY_VERSION.
#
# Where the source comes from, in order:
#   COSYFAST_LMDEPLOY_SOURCE=<dir>        an lmdeploy checkout at the pinned tag
#   COSYFAST_LMDEPLOY_SOURCE=<.tar.gz>    an archive holding lmdeploy-<version>/ and, optionally,
#                                         deps/{cutlass,fmt,yaml-cpp,xgrammar,concurrentqueue}:
#                                         the sources lmdeploy's CMake would fetch (offline builds)
#   (empty)                               git tag v<version> from GitHub, at configure time
# A deps/ folder beside a source dir is used the same way.

set(COSYFAST_LMDEPLOY_VERSION 0.16.0)
set(COSYFAST_LMDEPLOY_SOURCE "" CACHE STRING
    "lmdeploy ${COSYFAST_LMDEPLOY_VERSION} source: a directory or a .tar.gz (empty: fetch the tag from GitHub)")

if(NOT CMAKE_CUDA_ARCHITECTURES)
  message(FATAL_ERROR "COSYFAST_TURBOMIND=ON needs CMAKE_CUDA_ARCHITECTURES (e.g. 90a-real for H100/H200, "
                      "80-real for A100, 89-real for L4/L40): TurboMind's kernels take minutes per architecture")
endif()

set(_tm_work "${CMAKE_BINARY_DIR}/lmdeploy")
file(MAKE_DIRECTORY "${_tm_work}")

# 1. The pristine source.
set(_tm_deps "")
if(COSYFAST_LMDEPLOY_SOURCE MATCHES "\\.(tar\\.gz|tgz)$")
  if(NOT EXISTS "${COSYFAST_LMDEPLOY_SOURCE}")
    message(FATAL_ERROR "COSYFAST_LMDEPLOY_SOURCE: no such archive: ${COSYFAST_LMDEPLOY_SOURCE}")
  endif()
  file(SHA256 "${COSYFAST_LMDEPLOY_SOURCE}" _tm_archive_hash)
  set(_tm_unpacked "${_tm_work}/unpacked-${_tm_archive_hash}")
  if(NOT EXISTS "${_tm_unpacked}/.done")
    message(STATUS "cosyfast: unpacking ${COSYFAST_LMDEPLOY_SOURCE}")
    file(REMOVE_RECURSE "${_tm_unpacked}")
    file(ARCHIVE_EXTRACT INPUT "${COSYFAST_LMDEPLOY_SOURCE}" DESTINATION "${_tm_unpacked}")
    file(TOUCH "${_tm_unpacked}/.done")
  endif()
  set(_tm_pristine "${_tm_unpacked}/lmdeploy-${COSYFAST_LMDEPLOY_VERSION}")
  set(_tm_deps "${_tm_unpacked}/deps")
elseif(COSYFAST_LMDEPLOY_SOURCE)
  set(_tm_pristine "${COSYFAST_LMDEPLOY_SOURCE}")
  get_filename_component(_tm_deps "${COSYFAST_LMDEPLOY_SOURCE}/../deps" ABSOLUTE)
else()
  include(FetchContent)
  # SOURCE_SUBDIR names nothing: only download, the patched copy below is what gets built.
  FetchContent_Declare(cosyfast_lmdeploy GIT_REPOSITORY https://github.com/InternLM/lmdeploy.git
                       GIT_TAG v${COSYFAST_LMDEPLOY_VERSION} GIT_SHALLOW TRUE SOURCE_SUBDIR cosyfast-download-only)
  FetchContent_MakeAvailable(cosyfast_lmdeploy)
  set(_tm_pristine "${cosyfast_lmdeploy_SOURCE_DIR}")
endif()
if(NOT EXISTS "${_tm_pristine}/src/turbomind/turbomind.h")
  message(FATAL_ERROR "cosyfast: ${_tm_pristine} does not hold lmdeploy's TurboMind source (src/turbomind/)")
endif()

# Offline: point lmdeploy's own FetchContent calls at the bundled deps.
if(_tm_deps AND EXISTS "${_tm_deps}/cutlass")
  set(FETCHCONTENT_FULLY_DISCONNECTED ON CACHE BOOL "" FORCE)
  set(FETCHCONTENT_SOURCE_DIR_REPO-CUTLASS "${_tm_deps}/cutlass" CACHE PATH "" FORCE)
  set(FETCHCONTENT_SOURCE_DIR_FMT "${_tm_deps}/fmt" CACHE PATH "" FORCE)
  set(FETCHCONTENT_SOURCE_DIR_YAML-CPP "${_tm_deps}/yaml-cpp" CACHE PATH "" FORCE)
  set(FETCHCONTENT_SOURCE_DIR_CONCURRENTQUEUE "${_tm_deps}/concurrentqueue" CACHE PATH "" FORCE)
  # xgrammar's CMake adds -flto=auto, which some toolchains cannot link (no LTO plugin): build a
  # copy without it.
  set(_tm_xgrammar "${_tm_work}/xgrammar")
  if(NOT EXISTS "${_tm_xgrammar}/CMakeLists.txt")
    file(COPY "${_tm_deps}/xgrammar/" DESTINATION "${_tm_xgrammar}")
    file(READ "${_tm_xgrammar}/CMakeLists.txt" _tm_text)
    string(REPLACE "-flto=auto" "" _tm_text "${_tm_text}")
    file(WRITE "${_tm_xgrammar}/CMakeLists.txt" "${_tm_text}")
  endif()
  set(FETCHCONTENT_SOURCE_DIR_XGRAMMAR "${_tm_xgrammar}" CACHE PATH "" FORCE)
endif()

# 2. The patched copy: lmdeploy's tree, our patch, our new files. Rebuilt when any input changes.
set(_tm_ours
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyvoice_config.h"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyvoice_sampling.h"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyvoice_sampling.cc"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyvoice_sampling_kernel.h"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyvoice_sampling_kernel.cu")
# The decode GEMM hook lives beside LlamaLinear, which calls it; the decode graphs beside
# UnifiedDecoder, which runs them.
set(_tm_ours_linear
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyfast_decode_gemm.h"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyfast_decode_gemm.cu"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyfast_decode_graph.h"
    "${PROJECT_SOURCE_DIR}/third_party/turbomind/cosyfast_decode_graph.cc")
set(_tm_patch "${PROJECT_SOURCE_DIR}/third_party/lmdeploy-${COSYFAST_LMDEPLOY_VERSION}-cosyfast.patch")
set(_tm_stamp_text "${_tm_pristine}")
foreach(_f ${_tm_patch} ${_tm_ours} ${_tm_ours_linear})
  file(SHA256 "${_f}" _h)
  string(APPEND _tm_stamp_text " ${_h}")
endforeach()
string(SHA256 _tm_stamp "${_tm_stamp_text}")
# A plain `cmake --build` of an existing tree re-runs this check when any of them changes.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_tm_patch} ${_tm_ours} ${_tm_ours_linear})
set(_tm_src "${_tm_work}/src-${COSYFAST_LMDEPLOY_VERSION}")
set(_tm_done "")
if(EXISTS "${_tm_src}/.cosyfast-stamp")
  file(READ "${_tm_src}/.cosyfast-stamp" _tm_done)
endif()
if(NOT _tm_done STREQUAL _tm_stamp)
  message(STATUS "cosyfast: patching lmdeploy ${COSYFAST_LMDEPLOY_VERSION} into ${_tm_src}")
  file(REMOVE_RECURSE "${_tm_src}")
  file(MAKE_DIRECTORY "${_tm_src}")
  foreach(_part CMakeLists.txt cmake src LICENSE)
    if(EXISTS "${_tm_pristine}/${_part}")
      file(COPY "${_tm_pristine}/${_part}" DESTINATION "${_tm_src}")
    endif()
  endforeach()
  find_program(COSYFAST_PATCH_EXECUTABLE patch REQUIRED)
  execute_process(COMMAND "${COSYFAST_PATCH_EXECUTABLE}" -p1 --forward --batch -i "${_tm_patch}"
                  WORKING_DIRECTORY "${_tm_src}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "cosyfast: ${_tm_patch} does not apply to ${_tm_pristine}:\n${_out}")
  endif()
  file(COPY ${_tm_ours} DESTINATION "${_tm_src}/src/turbomind/generation")
  file(COPY ${_tm_ours_linear} DESTINATION "${_tm_src}/src/turbomind/models/llama")
  file(WRITE "${_tm_src}/.cosyfast-stamp" "${_tm_stamp}")
endif()

# 3. Build it: one GPU (cosyfast runs data parallel, one engine per GPU), no Python module of
# its own, no tests.
set(BUILD_MULTI_GPU OFF CACHE BOOL "" FORCE)
set(BUILD_PY_FFI OFF CACHE BOOL "" FORCE)
set(BUILD_TEST OFF CACHE BOOL "" FORCE)
add_subdirectory("${_tm_src}" "${CMAKE_BINARY_DIR}/lmdeploy-build" EXCLUDE_FROM_ALL)

# lmdeploy sets its include paths and definitions on its directory, not on its targets: our
# sources that include its headers need the same.
get_directory_property(_tm_includes DIRECTORY "${_tm_src}" INCLUDE_DIRECTORIES)
get_directory_property(_tm_definitions DIRECTORY "${_tm_src}" COMPILE_DEFINITIONS)

# lmdeploy's Python binding (Module/Param/Tensor/config types, TurboMind.create, ...), which its
# weight converter drives. Compiled into cosyfast._core and imported from that same file as the
# modules `_turbomind` and `_xgrammar` (cosyfast/turbomind.py); it calls the TurboMind in
# libcosyfast_engine.so, so the converter fills the very TurboMind that cosyfast's C++ engine runs.
set(_tm_py "${_tm_src}/src/turbomind")
add_library(cosyfast_tm_bindings OBJECT
            "${_tm_py}/python/bind.cpp" "${_tm_py}/python/linear_bind.cpp" "${_tm_py}/python/xgrammar_bind.cpp"
            "${_tm_py}/kernels/linear_attn/python_bind.cpp" "${_tm_py}/kernels/gemm/moe_gate_python_bind.cpp")
set_target_properties(cosyfast_tm_bindings PROPERTIES CXX_STANDARD 17 POSITION_INDEPENDENT_CODE ON)
target_include_directories(cosyfast_tm_bindings PRIVATE ${_tm_includes})
target_compile_definitions(cosyfast_tm_bindings PRIVATE ${_tm_definitions} PYBIND11_COMPILER_TYPE="_cosyfast")
# Only its objects are used ($<TARGET_OBJECTS:...> in _core): the libraries linked here give
# their usage requirements (headers, definitions) and are linked nowhere through it.
target_link_libraries(cosyfast_tm_bindings PRIVATE pybind11::module turbomind xgrammar)

# What code that drives TurboMind compiles with: its headers and definitions, and the CUDA runtime
# it calls (the binding's objects above go into cosyfast._core only).
add_library(cosyfast_turbomind_headers INTERFACE)
target_include_directories(cosyfast_turbomind_headers INTERFACE ${_tm_includes})
target_compile_definitions(cosyfast_turbomind_headers INTERFACE ${_tm_definitions} COSYFAST_WITH_TURBOMIND=1
                           COSYFAST_LMDEPLOY_VERSION="${COSYFAST_LMDEPLOY_VERSION}")
target_link_libraries(cosyfast_turbomind_headers INTERFACE CUDA::cudart)
# ... and the libraries themselves, for the one target that holds TurboMind.
add_library(cosyfast_turbomind INTERFACE)
target_link_libraries(cosyfast_turbomind INTERFACE cosyfast_turbomind_headers turbomind xgrammar)

# cosyfast_link_what_objects_need(TARGET OBJECTS_TARGET): TARGET (a shared library linking static
# archives) also takes every archive member that OBJECTS_TARGET's objects call, though they are
# linked elsewhere (lmdeploy's binding into _core calls parts of TurboMind that cosyfast's engine
# does not). The objects' undefined symbols, except Python's and pybind11's, are listed as EXTERN
# in a linker script given to TARGET's link.
function(cosyfast_link_what_objects_need target objects_target)
  set(_script "${CMAKE_CURRENT_BINARY_DIR}/${target}-needs-${objects_target}.ld")
  add_custom_command(OUTPUT "${_script}"
    COMMAND "${CMAKE_COMMAND}" "-DNM=${CMAKE_NM}" "-DOUT=${_script}"
            "-DOBJECTS=$<JOIN:$<TARGET_OBJECTS:${objects_target}>,|>"
            -P "${PROJECT_SOURCE_DIR}/cmake/extern_script.cmake"
    DEPENDS ${objects_target} "$<TARGET_OBJECTS:${objects_target}>" "${PROJECT_SOURCE_DIR}/cmake/extern_script.cmake"
    COMMENT "cosyfast: the TurboMind symbols ${objects_target} calls"
    VERBATIM)
  add_custom_target(${target}-needs DEPENDS "${_script}")
  add_dependencies(${target} ${target}-needs)
  target_link_options(${target} PRIVATE "${_script}")
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${_script}")
endfunction()
