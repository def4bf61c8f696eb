#!/usr/bin/env bash
# Prints the content hash of what a cosyfast build compiles and packs (the CMake project, the C++,
# the host programs, the TurboMind patch, the packaging scripts and the Python package; not the
# *.md docs). gpu_run.sh installs an engine wheel carried in the pack only when the stamp written
# beside it equals the tree's: a wheel from an older tree is never what gets measured. Works without
# git (the GPU machine's copy of the tree has no reliable git state).
set -euo pipefail
cd "$(dirname "$0")/.."
find CMakeLists.txt pyproject.toml cmake csrc include tools third_party packaging python -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.md' -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
