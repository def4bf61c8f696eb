#!/usr/bin/env bash
# The whole one-GPU session in one call: GPU tests, the recorded three-path run (cosyfast with its
# defaults, lmdeploy's own loop, the HF loop) over the full sweep, then the earlier designs of
# this repo at 64 sessions for comparison in the same call.
#   bash benchmarks/gpu_session.sh      (from the repo root on the GPU machine; results in $OUT)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; export OUT
bash benchmarks/gpu_run.sh tests,bench --paths cosyfast,turbomind-native,hf --concurrency 1,4,16,64,128,256 \
  --new-tokens 500
source /tmp/tm_env.sh; cd /tmp
bench() { python3 -m cosyfast.bench --paths cosyfast "$@" 2>&1 | grep -E "^  [a-z]" | tee -a "$OUT/variants.log"; }
# One instance, one lane, TurboMind's own max_context_token_num (= session_len): the design
# before attempts 8-10 of benchmarks/NOTES.md; then one instance and one lane with attempt 8 only.
bench --concurrency 64 --new-tokens 500 --replicas 1 --lanes 1 --engine-option max_context_token_num=4096 \
  --label r1l1-ctx4096 --out "$OUT/v_before"
bench --concurrency 64 --new-tokens 500 --replicas 1 --lanes 1 --label r1l1 --out "$OUT/v_ctx"
python3 - <<'PY' > "$OUT/all_rows.txt"
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*/results.jsonl")):
    for line in open(f):
        r = json.loads(line); print(r["path"], r["concurrency"], r["tok_per_s"], r["ms_per_token_p50"], r["first_token_ms_p50"], r["extra"])
PY
rm -f "$OUT"/v_*/results.md "$OUT/bench.log"
cat "$OUT/all_rows.txt"
