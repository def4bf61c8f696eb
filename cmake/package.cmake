# What a C/C++ build needs from the installed wheel, all under the package directory (the wheel's
# install prefix is site-packages, known only at install time, so every file here finds the others
# relative to itself):
#   cosyfast/lib/libcosyfast.so                 the C API (cosyfast-host links it); the engine is
#                                               libcosyfast_engine.so beside it, shared with _core
#   cosyfast/include/cosyfast/{c_api.h,cosyfast.hpp}
#   cosyfast/lib/cmake/cosyfast/                find_package(cosyfast): the target cosyfast::cosyfast
#   cosyfast/lib/pkgconfig/cosyfast.pc          pkg-config --cflags --libs cosyfast
# `cosyfast info --cmake-dir` / `--pkg-config-dir` (and cosyfast._paths: cmake_dir() and friends)
# print where they are; docs/cpp.md shows how to use them.
set(COSYFAST_PACKAGE_DIR cosyfast)
set(COSYFAST_LIB_DIR ${COSYFAST_PACKAGE_DIR}/lib)
set(COSYFAST_INCLUDE_DIR ${COSYFAST_PACKAGE_DIR}/include)
set(COSYFAST_CMAKE_DIR ${COSYFAST_LIB_DIR}/cmake/cosyfast)
set(COSYFAST_PKGCONFIG_DIR ${COSYFAST_LIB_DIR}/pkgconfig)

if(NOT TARGET cosyfast)  # COSYFAST_SHARED_LIB=OFF: the host programs link the C API's objects
  return()
endif()

# Only the C API leaves the library. Hidden visibility is not enough: libstdc++ gives its templates
# default visibility, so every std:: instantiation the engine uses would be exported too, and a
# host's own instantiations could bind to them (or theirs to the library's).
set(_cosyfast_exports ${CMAKE_CURRENT_BINARY_DIR}/cosyfast.exports)
# (file(CONFIGURE) leaves an unchanged file alone: a rewrite would relink the library at every configure)
file(CONFIGURE OUTPUT ${_cosyfast_exports} CONTENT "{\n  global: cosyfast_*;\n  local: *;\n};\n")
target_link_options(cosyfast PRIVATE -Wl,--version-script=${_cosyfast_exports})
set_property(TARGET cosyfast APPEND PROPERTY LINK_DEPENDS ${_cosyfast_exports})

# No SOVERSION: a wheel stores the libcosyfast.so.N symlinks as copies, i.e. the engine twice.
install(TARGETS cosyfast LIBRARY DESTINATION ${COSYFAST_LIB_DIR})
install(DIRECTORY include/cosyfast DESTINATION ${COSYFAST_INCLUDE_DIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp")

# The version is pyproject.toml's: scikit-build-core passes it; a plain CMake build reads it there.
if(DEFINED SKBUILD_PROJECT_VERSION)
  set(COSYFAST_PACKAGE_VERSION ${SKBUILD_PROJECT_VERSION})
else()
  file(STRINGS ${PROJECT_SOURCE_DIR}/pyproject.toml _cosyfast_version_line REGEX "^version = \"[^\"]+\"$" LIMIT_COUNT 1)
  string(REGEX REPLACE "^version = \"([^\"]+)\"$" "\\1" COSYFAST_PACKAGE_VERSION "${_cosyfast_version_line}")
endif()

include(CMakePackageConfigHelpers)
configure_package_config_file(cmake/cosyfastConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/cosyfastConfig.cmake
                              INSTALL_DESTINATION ${COSYFAST_CMAKE_DIR}
                              PATH_VARS COSYFAST_LIB_DIR COSYFAST_INCLUDE_DIR)
# 0.x: a minor release may change the C API, so only the same major.minor satisfies a request.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/cosyfastConfigVersion.cmake
                                 VERSION ${COSYFAST_PACKAGE_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cosyfastConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/cosyfastConfigVersion.cmake
        DESTINATION ${COSYFAST_CMAKE_DIR})

configure_file(cmake/cosyfast.pc.in ${CMAKE_CURRENT_BINARY_DIR}/cosyfast.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cosyfast.pc DESTINATION ${COSYFAST_PKGCONFIG_DIR})
