#!/usr/bin/env bash
# Experiments behind benchmarks/NOTES.md (attempts 8+), each set in one GPU call (results in $OUT):
#   bash benchmarks/gpu_experiments.sh processes   # GPU tests; one process of 64 sessions vs two
#                                                  # processes of 32 on the same GPU; async_=1; 4 lanes
#   bash benchmarks/gpu_experiments.sh shapes      # where a round goes with replicas x lanes: GPU
#                                                  # utilisation and thread CPU (probe_round.py),
#                                                  # then replicas / lanes / max_batch variants
#   bash benchmarks/gpu_experiments.sh low         # 1-64 sessions over instances x lanes
#   bash benchmarks/gpu_experiments.sh iterations  # GPU tests; engine iterations per round (does a
#                                                  # round reach TurboMind in one iteration?) by shape
#   bash benchmarks/gpu_experiments.sh sampling    # sample threads per lane (0 / 2 / 4) at 64-256
#   bash benchmarks/gpu_experiments.sh trace       # CUDA timelines (probe_round --trace, summarised by
#                                                  # trace_summary.py); then processes under CUDA MPS
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; export OUT
REPO=$PWD
bench() { python3 -m cosyfast.bench --paths cosyfast "$@" 2>&1 | grep -E "^  [a-z]|Error"; }
case ${1:-} in
processes)
  bash benchmarks/gpu_run.sh tests,bench --paths cosyfast --concurrency 64 --new-tokens 2000 --replicas 1 --lanes 2 \
    --label one-process-64 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  # Both start together and load the cached model in about the same time; 2000 tokens per session
  # make the timed runs long enough that a second of skew between them matters little.
  for i in 1 2; do
    (bench --concurrency 32 --new-tokens 2000 --replicas 1 --lanes 2 --label proc$i-of-2 --out "$OUT/p$i" \
      > "$OUT/p$i.log") &
  done
  wait
  cat "$OUT"/p1.log "$OUT"/p2.log
  bench --concurrency 16,64,256 --new-tokens 300 --replicas 1 --lanes 2 --engine-option async_=1 \
    --label async1-r1l2 --out "$OUT/async1"
  bench --concurrency 64 --new-tokens 300 --replicas 1 --lanes 4 --label r1l4 --out "$OUT/r1l4"
  grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -f "$OUT"/*/results.md "$OUT"/*/results.png "$OUT"/p1.log "$OUT"/p2.log
  ;;
shapes)
  bash benchmarks/gpu_run.sh bench --paths cosyfast --concurrency 64,128 --new-tokens 300 --replicas 2 --lanes 2 \
    --label r2l2 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  for rl in "1 2" "2 2"; do
    set -- $rl
    python3 "$REPO/benchmarks/probe_round.py" --out "$OUT/probe_r$1l$2" --replicas "$1" --lanes "$2" --tokens 1000 \
      2>&1 | grep -vE "^\[TM\]|INFO|generating|writing|Loading|dtype="
  done
  bench --concurrency 64,128 --new-tokens 300 --replicas 3 --lanes 2 --label r3l2 --out "$OUT/r3l2"
  bench --concurrency 64 --new-tokens 300 --replicas 2 --lanes 2 --max-batch 64 --label r2l2-mb64 --out "$OUT/mb64"
  bench --concurrency 64 --new-tokens 300 --replicas 1 --lanes 2 --max-batch 64 --label r1l2-mb64 --out "$OUT/mb64b"
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -f "$OUT"/*/results.md "$OUT"/*/results.png "$OUT"/*/trace_*
  ;;
low)
  # Low concurrency: how instances and lanes share 1-64 sessions (the default's choice).
  bash benchmarks/gpu_run.sh bench --paths cosyfast --concurrency 1,4,16,64 --new-tokens 300 --replicas 2 --lanes 2 \
    --label r2l2 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  for rl in "4 2" "4 1" "2 1"; do
    set -- $rl
    bench --concurrency 1,4,16,64 --new-tokens 300 --replicas "$1" --lanes "$2" --label "r$1l$2" --out "$OUT/r$1l$2"
  done
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -f "$OUT"/*/results.md "$OUT"/*/results.png
  ;;
trace)
  bash benchmarks/gpu_run.sh bench --paths cosyfast --concurrency 64 --new-tokens 1000 --replicas 2 --lanes 2 \
    --label r2l2 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  for rln in "1 1 32" "1 2 64" "2 2 64"; do
    set -- $rln
    d="$OUT/probe_r$1l$2n$3"
    timeout 150 python3 "$REPO/benchmarks/probe_round.py" --out "$d" --replicas "$1" --lanes "$2" --sessions "$3" \
      --tokens 1000 --trace 2>&1 | grep -E "^cosyfast|^native|^threads|^  [0-9]+:" | head -12
    for t in cosyfast native; do
      echo "== trace $t r$1l$2 n$3"
      python3 "$REPO/benchmarks/trace_summary.py" "$d/trace_$t.json.gz"
    done
    rm -f "$d"/trace_*
  done 2>&1 | tee "$OUT/traces.txt"
  # Processes under CUDA MPS (attempt 12 without MPS time-sliced the GPU between two contexts).
  if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    nvidia-cuda-mps-control -d && echo "MPS daemon started"
    bench --concurrency 64 --new-tokens 1000 --replicas 2 --lanes 2 --label mps-one-process --out "$OUT/mps1"
    for n in 2 4; do
      for i in $(seq $n); do
        (bench --concurrency $((64 / n)) --new-tokens 1000 --replicas 1 --lanes 2 --label mps-proc$i-of-$n \
          --out "$OUT/mps$n-$i" > "$OUT/mps$n-$i.log") &
      done
      wait
      cat "$OUT"/mps$n-*.log
    done
    echo quit | nvidia-cuda-mps-control
    tail -5 $CUDA_MPS_LOG_DIRECTORY/control.log 2>/dev/null
  else
    echo "no nvidia-cuda-mps-control on this machine"
  fi 2>&1 | tee "$OUT/mps.txt"
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -rf "$OUT"/mps*-* "$OUT"/mps1 "$OUT"/*/results.md "$OUT"/*/results.png
  ;;
iterations)
  bash benchmarks/gpu_run.sh tests,bench --paths cosyfast --concurrency 16,64,128 --new-tokens 500 --replicas 2 \
    --lanes 2 --label r2l2 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  for rl in "1 1" "1 2" "2 1" "4 2"; do
    set -- $rl
    bench --concurrency 16,64,128 --new-tokens 500 --replicas "$1" --lanes "$2" --label "r$1l$2" --out "$OUT/r$1l$2"
  done
  grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -f "$OUT"/*/results.md "$OUT"/*/results.png
  ;;
sampling)
  bash benchmarks/gpu_run.sh bench --paths cosyfast --concurrency 64,128,256 --new-tokens 500 --label st0 >/dev/null
  source /tmp/tm_env.sh; cd /tmp
  for t in 2 4; do
    bench --concurrency 64,128,256 --new-tokens 500 --sample-threads $t --label st$t --out "$OUT/st$t"
  done
  bench --concurrency 64,128,256 --new-tokens 500 --label st0-again --out "$OUT/st0b"
  grep -E "^  [a-z]" "$OUT/bench.log"
  rm -f "$OUT"/*/results.md "$OUT"/*/results.png
  ;;
*) echo "usage: $0 processes|shapes|low|trace|iterations|sampling" >&2; exit 2 ;;
esac
