#!/usr/bin/env bash
# Everything the GPU machine does, in one go: set TurboMind 0.14 up, build cosyfast, run the GPU
# tests, then the benchmark. Usage (from the repo root on the GPU machine):
#   bash benchmarks/gpu_run.sh [tests] [bench] [bench-args...]
# Results go to $OUT (or ./gpu-out): gpu_tests.log, gpu_parity.jsonl, bench/results.{jsonl,md,png}.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 COSYFAST_CACHE=${COSYFAST_CACHE:-/tmp/cosyfast-cache}
STAGES=${1:-tests,bench}; shift || true
bash .device/setup.sh >/dev/null && source /tmp/tm_env.sh || { echo "TurboMind setup failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -20 || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
cd /tmp  # import the installed package, not the source tree
if [[ $STAGES == *tests* ]]; then
  python3 -m pytest -x -q -p no:cacheprovider "$OLDPWD/tests/test_turbomind_gpu.py" 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
fi
if [[ $STAGES == *bench* ]]; then
  python3 -m cosyfast.bench --out "$OUT/bench" --plot "$@" 2>&1 | grep -v "^\[TM\]" | tee "$OUT/bench.log" | tail -40
fi
