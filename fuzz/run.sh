#!/usr/bin/env bash
# Build the three libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) and run each,
# one after another, for SECONDS (default 60), printing each target's run count.
# Usage: fuzz/run.sh [seconds]      (needs clang and libFuzzer: apt-get install -y clang libclang-rt-14-dev;
#                                    seeds need torch and numpy, as the package does)
# Work goes to $FUZZ_OUT (default ${TMPDIR:-/tmp}/cosyfast-fuzz): binaries, seeds/, corpus/<target>
# (kept between runs, so a later run starts from what an earlier one found), logs and crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
out="${FUZZ_OUT:-${TMPDIR:-/tmp}/cosyfast-fuzz}"
cxx="${CXX_FUZZ:-clang++}"
mkdir -p "$out"
# nlohmann/json's headers: the pinned PyPI package (pip install nlohmann-json==3.12.0), as the build's.
json_include="${COSYFAST_JSON_INCLUDE:-$(python3 -c "import importlib.util, os; s = importlib.util.find_spec('nlohmann_json'); print(os.path.join(list(s.submodule_search_locations)[0], 'include') if s else '')")}"
[[ -f "$json_include/nlohmann/json.hpp" ]] || { echo "fuzz/run.sh: nlohmann/json not found: pip install nlohmann-json==3.12.0" >&2; exit 2; }
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Icsrc -Ifuzz -isystem "$json_include")
io=(csrc/io/json.cc)
st=(csrc/io/json.cc csrc/io/safetensors.cc)
bundle=(csrc/io/json.cc csrc/io/safetensors.cc csrc/io/bundle.cc csrc/core/tables.cc csrc/engines/cpu_qwen2.cc)
"$cxx" "${flags[@]}" fuzz/fuzz_json.cc "${io[@]}" -o "$out/fuzz_json" &
"$cxx" "${flags[@]}" fuzz/fuzz_safetensors.cc "${st[@]}" -o "$out/fuzz_safetensors" &
"$cxx" "${flags[@]}" fuzz/fuzz_bundle.cc "${bundle[@]}" -o "$out/fuzz_bundle" -lpthread &
wait %1 && wait %2 && wait %3
[[ -d "$out/seeds/bundle" ]] || PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" python3 fuzz/make_seeds.py "$out/seeds"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1
status=0
for target in json safetensors bundle; do
  mkdir -p "$out/corpus/$target" "$out/crashes/$target"
  log="$out/$target.log"
  echo "== fuzz_$target: ${seconds}s"
  # -rss_limit_mb / -malloc_limit_mb: a size bomb that gets past the readers' checks is a finding.
  if "$out/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
       -print_final_stats=1 -artifact_prefix="$out/crashes/$target/" \
       "$out/corpus/$target" "$out/seeds/$target" >"$log" 2>&1; then
    result="no crash"
  else
    result="FAILED (see $log and $out/crashes/$target/)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz_$target: $runs runs in ${seconds}s, corpus $(ls "$out/corpus/$target" | wc -l) inputs, $result"
done
exit $status
