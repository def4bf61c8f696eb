#!/usr/bin/env bash
# Everything the GPU machine does, in one go: build cosyfast with the TurboMind engine (lmdeploy's
# source + cosyfast's patch), run the GPU tests, then the benchmark.
#   bash benchmarks/gpu_run.sh [build,tests,bench] [bench-args...]     (from the repo root)
# Needs the offline pack in $COSYFAST_DEVICE_PACK (default .tm016, kept out of git):
#   bash ../shared/turbomind-src/pack_python.sh .tm016            # lmdeploy's Python package + deps
#   cp ../shared/turbomind-src/lmdeploy-0.16.0-src.tar.gz .tm016/ # lmdeploy 0.16.0 + its pinned deps
# (a machine with network access needs neither: pip fetches lmdeploy, CMake fetches the source).
# Results go to $OUT (or ./gpu-out): device.txt (GPU, build time), gpu_tests.{log,jsonl}, bench/results.*
# (build.log when the build fails).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
STAGES=${1:-build,tests,bench}; shift || true
PACK=${COSYFAST_DEVICE_PACK:-$PWD/.tm016}
export PYTHONUNBUFFERED=1 COSYFAST_CACHE=${COSYFAST_CACHE:-/tmp/cosyfast-cache}
SITE=/tmp/site
if [ ! -d "$SITE/lmdeploy" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$PACK"/whl/*.whl >/dev/null &&
    python3 -m zipfile -e "$PACK/lmdeploy_py.zip" "$SITE" || { echo "unpacking $PACK failed"; exit 1; }
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# The system compiler: a TurboMind built with the image's /opt/gcc crashes at engine creation.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [[ $STAGES == *build* ]]; then
  t0=$(date +%s)
  python3 -m pip install -v --no-build-isolation --no-deps . \
    -C cmake.define.COSYFAST_TURBOMIND=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
    -C cmake.define.COSYFAST_LMDEPLOY_SOURCE="$PACK/lmdeploy-0.16.0-src.tar.gz" \
    -C build-dir=/tmp/cosyfast-build > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/device.txt"
  rm -f "$OUT/build.log"  # kept only when the build fails (the files that come back are few)
fi
cd /tmp  # import the installed package, not the source tree
python3 -c "import cosyfast.turbomind as t; t.check_turbomind(); print('turbomind engine: built from lmdeploy', t.LMDEPLOY_VERSION)" || exit 1
if [[ $STAGES == *tests* ]]; then
  python3 -m pytest -q -p no:cacheprovider -x "$OLDPWD/tests/test_turbomind_gpu.py" ${COSYFAST_TESTS_K:+-k "$COSYFAST_TESTS_K"} 2>&1 \
    | grep -v "^\[TM\]" | tee "$OUT/gpu_tests.log" | tail -40
fi
if [[ $STAGES == *bench* ]]; then
  python3 -m cosyfast.bench --out "$OUT/bench" --plot "$@" 2>&1 | grep -v "^\[TM\]" | tee "$OUT/bench.log" | tail -40
fi
