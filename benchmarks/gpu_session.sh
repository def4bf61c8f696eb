#!/usr/bin/env bash
# The whole GPU session in one call (tests, the recorded three-path run, the tuning variants):
#   bash benchmarks/gpu_session.sh      (from the repo root on the GPU machine; results in $OUT)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; export OUT
bash benchmarks/gpu_run.sh tests,bench --paths cosyfast,turbomind-native,hf --concurrency 1,16,64,128 \
  --new-tokens 500
source /tmp/tm_env.sh; cd /tmp
bench() { python3 -m cosyfast.bench "$@" 2>&1 | grep -E "^  [a-z]" | tee -a "$OUT/variants.log"; }
for r in 4 8; do
  bench --paths cosyfast --concurrency 1,64,128,256 --new-tokens 500 --replicas $r --label cosyfast-r$r --out "$OUT/v_r$r"
done
python3 - <<'PY' > "$OUT/all_rows.txt"
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*/results.jsonl")):
    for line in open(f):
        r = json.loads(line); print(r["path"], r["concurrency"], r["tok_per_s"], r["ms_per_token_p50"], r["first_token_ms_p50"], r["extra"])
PY
cat "$OUT/all_rows.txt"
