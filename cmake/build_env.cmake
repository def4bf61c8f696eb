# How the build runs, whoever starts it (pip, CMake by hand, packaging/build_wheel.sh):
#   - ccache, when installed, in front of every compiler (COSYFAST_CCACHE=OFF to build without):
#     a rebuild in another tree or venv, and TurboMind's kernels, come back from the cache;
#   - header-only dependencies that pip installs (pybind11, nlohmann-json) are included from a copy
#     in the build tree that changes only when their content does, so that reinstalling one (or
#     another venv's copy) does not recompile every file that includes it. (An isolated
#     `pip install` is compiled from scratch anyway: scikit-build-core starts the build tree over
#     for each new isolated environment; hence the README's --no-build-isolation.)

option(COSYFAST_CCACHE "Compile through ccache when it is installed" ON)
if(COSYFAST_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  find_program(COSYFAST_CCACHE_PROGRAM ccache)
  if(COSYFAST_CCACHE_PROGRAM)
    set(CMAKE_C_COMPILER_LAUNCHER "${COSYFAST_CCACHE_PROGRAM}")
    set(CMAKE_CXX_COMPILER_LAUNCHER "${COSYFAST_CCACHE_PROGRAM}")
    set(CMAKE_CUDA_COMPILER_LAUNCHER "${COSYFAST_CCACHE_PROGRAM}")
    message(STATUS "cosyfast: compiling through ${COSYFAST_CCACHE_PROGRAM}")
  endif()
endif()

# cosyfast_stable_include(TARGET DIR NAME): TARGET (an imported header-only target) includes a copy
# of DIR kept in <build>/stable-include/NAME; files are rewritten only when their content differs.
function(cosyfast_stable_include target dir name)
  set(_dest "${CMAKE_BINARY_DIR}/stable-include/${name}")
  file(GLOB_RECURSE _headers RELATIVE "${dir}" "${dir}/*")
  foreach(_h ${_headers})
    configure_file("${dir}/${_h}" "${_dest}/${_h}" COPYONLY)  # leaves an identical file untouched
  endforeach()
  set_property(TARGET ${target} PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_dest}")
endfunction()
