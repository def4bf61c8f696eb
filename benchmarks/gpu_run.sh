#!/usr/bin/env bash
# Everything the GPU machine does, in one go: build cosyfast with the TurboMind engine (lmdeploy's
# source + cosyfast's patch), run the GPU tests, then the benchmark.
#   bash benchmarks/gpu_run.sh [build,tests,bench,memory,fastdecode,serveprobe,compare] [bench-args...]   (from the repo root)
# Needs, besides CUDA, PyTorch, pybind11, scikit-build-core and ninja, lmdeploy 0.16.0's Python package
# (its weight converter) and lmdeploy's source. Either
#   - the offline pack in $COSYFAST_DEVICE_PACK (default .gpupack, kept out of git), made on a
#     machine that reaches PyPI by `bash benchmarks/make_gpu_pack.sh` (for a GPU machine without
#     network), or
#   - no pack: `pip install "cosyfast[turbomind]"`'s lmdeploy (or `pip install lmdeploy==0.16.0`)
#     already installed, and CMake fetches the source from GitHub at configure time.
# The build stage installs the pack's engine wheel instead of compiling when make_gpu_pack.sh
# --with-engine made it from this very tree (benchmarks/source_stamp.sh), saving 170-280 s of device time.
# Results go to $OUT (or ./gpu-out): device.txt (GPU, build time), gpu_tests.{log,jsonl}, bench/results.*
# (build.log when the build fails).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
STAGES=${1:-build,tests,bench}; shift || true
PACK=${COSYFAST_DEVICE_PACK:-$PWD/.gpupack}
export PYTHONUNBUFFERED=1 COSYFAST_CACHE=${COSYFAST_CACHE:-/tmp/cosyfast-cache}
SOURCE_ARG=()
if [ -d "$PACK" ]; then
  # lmdeploy 0.16.0's Python (its converter, the reference loader) and the serve packages, keyed by
  # the pack's wheels: a machine still warm from an earlier call with another pack re-installs.
  SITE=/tmp/site016-$(ls "$PACK"/whl | md5sum | cut -c1-8)
  if [ ! -d "$SITE/lmdeploy" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$PACK"/whl/*.whl >/dev/null &&
      python3 -m zipfile -e "$PACK/lmdeploy_py.zip" "$SITE" || { echo "unpacking $PACK failed"; exit 1; }
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  [ -f "$PACK/lmdeploy-0.16.0-src.tar.gz" ] && SOURCE_ARG=(-C cmake.define.COSYFAST_LMDEPLOY_SOURCE="$PACK/lmdeploy-0.16.0-src.tar.gz")
  # CLI11's headers (host programs' flags) and nlohmann-json (in whl/): packaging/make_wheel_pack.sh adds them.
  [ -d "$PACK/cli11" ] && export COSYFAST_CLI11_INCLUDE=${COSYFAST_CLI11_INCLUDE:-$PACK/cli11/usr/include}
else
  python3 -c "import lmdeploy" 2>/dev/null || { echo "no pack at $PACK and no lmdeploy installed: pip install lmdeploy==0.16.0, or make the pack (benchmarks/make_gpu_pack.sh)"; exit 1; }
fi
# The system compiler: a TurboMind built with the image's /opt/gcc crashes at engine creation.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [[ $STAGES == *build* ]]; then
  t0=$(date +%s)
  # The pack's engine wheel (make_gpu_pack.sh --with-engine) when it was made from this very tree
  # and this Python; else the build from source.
  stamp=$(bash benchmarks/source_stamp.sh)
  py=cp$(python3 -c 'import sys; print(*sys.version_info[:2], sep="")')
  wheel=$(ls "$PACK"/engine/cosyfast-*-"$py"-*.whl 2>/dev/null | head -1)
  # An installed wheel must also import (session 11's first one did not: no libcuda.so.1 link).
  if [ -n "$wheel" ] && [ "$(cat "$PACK/engine/source.stamp")" = "$stamp" ] &&
     python3 -m pip install -q --no-index --no-deps --force-reinstall "$wheel" > "$OUT/build.log" 2>&1 &&
     (cd /tmp && python3 -c "import cosyfast.turbomind" >> "$OUT/build.log" 2>&1); then
    echo "build: none; installed the pack's $(basename "$wheel"), made from this tree (source stamp $stamp)" | tee -a "$OUT/device.txt"
  else
    [ -n "$wheel" ] && echo "the pack's engine wheel is not this tree's or did not install and import (stamp $(cat "$PACK/engine/source.stamp"), tree $stamp): building"
    python3 -m pip install -v --no-build-isolation --no-deps . \
      -C cmake.define.COSYFAST_TURBOMIND=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
      "${SOURCE_ARG[@]}" -C build-dir=/tmp/cosyfast-build > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; tail -40 "$OUT/build.log"; exit 1; }
    echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/device.txt"
  fi
  rm -f "$OUT/build.log"  # kept only when the build fails (the files that come back are few)
fi
cd /tmp  # import the installed package, not the source tree
python3 -c "import cosyfast.turbomind as t; t.check_turbomind(needs_lmdeploy=True); print('turbomind engine: built from lmdeploy', t.LMDEPLOY_VERSION)" || exit 1
if [[ $STAGES == *tests* ]]; then
  python3 -m pytest -q -rs --durations=12 -p no:cacheprovider "$OLDPWD/tests/test_turbomind_gpu.py" "$OLDPWD/tests/test_turbomind_loader_gpu.py" \
    ${COSYFAST_TESTS_K:+-k "$COSYFAST_TESTS_K"} 2>&1 \
    | grep -v "^\[TM\]" | tee "$OUT/gpu_tests.log" | tail -40
  tests_rc=${PIPESTATUS[0]}
fi
if [[ $STAGES == *bench* ]]; then
  python3 -m cosyfast.bench --out "$OUT/bench" --plot "$@" 2>&1 | grep -v "^\[TM\]" | tee "$OUT/bench.log" | tail -40
fi
if [[ $STAGES == *memory* ]]; then
  # The default budget (what max_batch sessions need) against the old default (half of the free
  # memory, no budget) at 256 sessions, and a 4 GB budget at 32 sessions; one JSON row each.
  mem() { python3 -m cosyfast.bench --paths cosyfast --new-tokens 500 --repeats 3 "$@" 2>&1 | grep -E "^  [a-z]"; }
  mem --concurrency 256 --label budget-default --out /tmp/m1
  mem --concurrency 256 --label no-budget-half-free --engine-option cache_max_entry_count=0.5 --out /tmp/m2
  mem --concurrency 32 --max-batch 32 --gpu-memory 4 --label budget-4gb --out /tmp/m3
  cat /tmp/m1/results.jsonl /tmp/m2/results.jsonl /tmp/m3/results.jsonl > "$OUT/memory.jsonl"
fi
if [[ $STAGES == *fastdecode* ]]; then
  # Issue 22's comparison, one engine build: cosyfast (the default: fast_decode and decode_graphs
  # on) against cosyfast with fast_decode off and TurboMind as shipped (fast_decode off, its own
  # sampler), and without graphs; then the per-step kernel breakdown and the greedy-divergence study.
  # FD_PARTS picks them (default sweep,profile,divergence: a call that cannot hold all runs some);
  # FD_SWEEP the sessions, FD_REPEATS the timed runs per point (default 3; the first token at 256
  # moved by several ms between runs of one build in session 10: more runs narrow its median).
  FD_PARTS=${FD_PARTS:-sweep,profile,divergence}
  FD_SWEEP=${FD_SWEEP:-1,16,64,128,256}
  if [[ $FD_PARTS == *sweep* ]]; then
    rm -rf /tmp/fd-on /tmp/fd-off /tmp/fd-nographs /tmp/fd-gated*  # a warm machine's earlier call left its own
    fd() { python3 -m cosyfast.bench --concurrency "$FD_SWEEP" --new-tokens 500 --repeats "${FD_REPEATS:-3}" "$@" 2>&1 | grep -E "^  [a-z]|^bench"; }
    fd --paths cosyfast --out /tmp/fd-on
    fd --paths cosyfast,turbomind-native --label cosyfast-shipped --engine-option fast_decode=0 --out /tmp/fd-off
    # fast_decode without decode_graphs: every launch from the host
    [ -n "${FD_NOGRAPHS-1}" ] && fd --paths cosyfast --label cosyfast-nographs --engine-option decode_graphs=0 --out /tmp/fd-nographs
    # FD_GATED="64 128": the fused gate/up GEMM left to TurboMind above that many rows (the hook's
    # fp32 accumulator + SiLU pass grows with M; cosyfast_decode_gemm.h), at the larger batches
    for g in ${FD_GATED-}; do
      COSYFAST_GATED_GEMM_MAX_ROWS=$g FD_SWEEP=${FD_GATED_SWEEP:-64,128,256} fd --paths cosyfast --label cosyfast-gated$g --out /tmp/fd-gated$g
    done
    cat /tmp/fd-on/results.jsonl /tmp/fd-off/results.jsonl /tmp/fd-nographs/results.jsonl /tmp/fd-gated*/results.jsonl > "$OUT/fast_decode_bench.jsonl" 2>/dev/null
  fi
  # step_profile.jsonl and greedy_divergence.jsonl are written straight to $OUT (a cut call keeps them)
  [[ $FD_PARTS == *profile* ]] && python3 "$OLDPWD/benchmarks/step_profile.py" --concurrency "${FD_PROFILE:-1,64}" \
    --paths "${FD_PROFILE_PATHS:-cosyfast,cosyfast-nographs,cosyfast-shipped,turbomind-native}" --out "$OUT" 2>&1 | grep '^{' |
    python3 -c "import json,sys; [print(json.dumps({k: r[k] for k in ('path','concurrency','wall_ms_per_step','gpu_busy_ms_per_step','launch_gap_share','gpu_ops_per_step','families_ms_per_step','decode_gemm','incomplete')})) for r in map(json.loads, sys.stdin)]"
  [[ $FD_PARTS == *divergence* ]] && python3 "$OLDPWD/benchmarks/greedy_divergence.py" --out "$OUT" 2>&1 | grep '"summary"'
fi
if [[ $STAGES == *serveprobe* ]]; then
  # Issue 19's first-token question in one call (~5 min as it stands; SP_FLUSH and SP_LOOPS shorten
  # it): what one request's start costs the calling thread (start_cost.py, ~40 s; 120 s at most),
  # the serve rows at the flush intervals SP_FLUSH (ms; default 5 20 50) against in-process (same
  # process), then the event loop's CPU per request and the spacing of a burst's requests at the
  # handler on the bench's workload (SP_LOOPS: "http flush-ms profile-rows" per run; default uvicorn
  # at 5, 20 and 50 ms, then 5 ms under cProfile; granian too when SP_GRANIAN is set, to any value).
  # Everything under $OUT/serveprobe: the caller tars it (few files come back from the device); each
  # part has a time limit so that a cut call keeps the earlier ones.
  mkdir -p "$OUT/serveprobe"
  timeout 120 python3 "$OLDPWD/benchmarks/start_cost.py" --streams 64 --rounds 5 2>&1 | grep -v "^\[TM\]" |
    tee "$OUT/serveprobe/start_cost.log" | grep -E "^(Model|Python|the core)" | tee "$OUT/serveprobe/start_cost.txt"
  flush_args=(); for f in ${SP_FLUSH:-5 20 50}; do flush_args+=(--serve-flush-ms "$f"); done
  timeout "${SP_BENCH_S:-240}" python3 -m cosyfast.bench --paths cosyfast,serve --concurrency "${SP_SWEEP:-1,16,64,256}" --new-tokens 500 \
    --repeats 3 "${flush_args[@]}" --out "$OUT/serveprobe/bench" 2>&1 |
    grep -v "^\[TM\]" | tee "$OUT/serveprobe/bench.log" | grep -A1 -E "^  (cosyfast|serve)"
  loops=${SP_LOOPS:-"uvicorn 5 0;uvicorn 20 0;uvicorn 50 0;${SP_GRANIAN:+granian 5 0;}uvicorn 5 30"}
  IFS=';' read -r -a runs <<< "$loops"
  for v in "${runs[@]}"; do
    read -r http flush prof <<< "$v"
    [ -n "$http" ] || continue
    log="$OUT/serveprobe/loop_${http}_f${flush}_p${prof}.txt"
    timeout 90 python3 "$OLDPWD/benchmarks/serve_loop_cost.py" --engine turbomind --size full --new-tokens 500 \
      --rounds 5 --http "$http" --flush-ms "$flush" --profile "$prof" > "$log" 2>&1
    echo "loop cost, $http, flush $flush ms, profile $prof:"; grep -E "^(loop|requests)" "$log"
  done
fi
if [[ $STAGES == *compare* ]]; then
  # lmdeploy's own loops, 0.16.0 (this build, CosyVoice sampling off) and 0.14.0 (its CUDA-12
  # wheel with a cuBLAS shim: no 0.14 source is to be had here), one process each.
  python3 "$OLDPWD/benchmarks/lmdeploy_own_loop.py" --cosyfast-engine 2>&1 | grep '^{' | tee "$OUT/own_loops.jsonl"
  P14=/tmp/p14; mkdir -p $P14/whl && cp "$PACK"/whl/*.whl "$PACK"/tm014/cu12/*.whl $P14/whl/ &&
    cp "$PACK"/tm014/{_turbomind.so.xz,lmdeploy_py.zip,setup.sh} $P14/ && bash $P14/setup.sh >/dev/null &&
    (source /tmp/tm_env.sh && python3 "$OLDPWD/benchmarks/lmdeploy_own_loop.py" 2>&1 | grep '^{' | tee -a "$OUT/own_loops.jsonl")
fi
exit "${tests_rc:-0}"  # a failed GPU test fails the run (the later stages still ran)
