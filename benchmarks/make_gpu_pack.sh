#!/usr/bin/env bash
# Makes the offline pack benchmarks/gpu_run.sh needs on the GPU machine (no registry there), from a
# machine that reaches PyPI, into .gpupack/ (ignored by git; ~25 MB, ~60 MB with --with-0.14):
#   whl/                         the pure-Python packages lmdeploy's converter imports
#   lmdeploy_py.zip              lmdeploy 0.16.0's Python package, without its CUDA-12 binaries
#   lmdeploy-0.16.0-src.tar.gz   lmdeploy 0.16.0's source with the sources its CMake fetches
#   tm014/                       (--with-0.14) lmdeploy 0.14.0's wheel build and Python, for the
#                                version comparison (gpu_run.sh compare)
# Usage: bash benchmarks/make_gpu_pack.sh [--with-0.14]     (from the repo root; the scripts and the
# source archive come from ../shared, see ../shared/turbomind-src/README.md)
set -euo pipefail
SHARED=${COSYFAST_SHARED:-../shared}
OUT=.gpupack
mkdir -p "$OUT"
[ -f /tmp/cosyfast-pack016/lmdeploy_py.zip ] || bash "$SHARED/turbomind-src/pack_python.sh" /tmp/cosyfast-pack016 >/dev/null
cp -r /tmp/cosyfast-pack016/whl "$OUT/"
# lmdeploy's own static xgrammar library (13 MB) is not needed: cosyfast builds TurboMind itself.
python3 - "$OUT/lmdeploy_py.zip" /tmp/cosyfast-pack016/lmdeploy_py.zip <<'PY'
import sys, zipfile
dst, src = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith("lmdeploy/lib/"):
            zout.writestr(item, zin.read(item))
import os; os.replace(dst + ".tmp", dst)
PY
cp "$SHARED/turbomind-src/lmdeploy-0.16.0-src.tar.gz" "$OUT/"
if [[ ${1:-} == --with-0.14 ]]; then
  [ -f /tmp/cosyfast-pack014/_turbomind.so.xz ] || bash "$SHARED/turbomind-cu13/pack.sh" /tmp/cosyfast-pack014 >/dev/null
  mkdir -p "$OUT/tm014/cu12"
  cp /tmp/cosyfast-pack014/{_turbomind.so.xz,lmdeploy_py.zip,setup.sh} "$OUT/tm014/"
  cp /tmp/cosyfast-pack014/whl/nvidia_cuda_runtime_cu12-*.whl "$OUT/tm014/cu12/"
fi
grep -qx "/.gpupack/" .git/info/exclude 2>/dev/null || echo "/.gpupack/" >> .git/info/exclude
du -sh "$OUT"
