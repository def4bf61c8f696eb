#!/usr/bin/env bash
# The whole GPU session in one call (tests, the recorded three-path run, the tuning variants):
#   bash benchmarks/gpu_session.sh      (from the repo root on the GPU machine; results in $OUT)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; export OUT
bash benchmarks/gpu_run.sh tests,bench --paths cosyfast,turbomind-native,hf --concurrency 1,16,64,128 \
  --new-tokens 500
source /tmp/tm_env.sh; cd /tmp
bench() { python3 -m cosyfast.bench "$@" 2>&1 | grep -E "^  [a-z]" | tee -a "$OUT/variants.log"; }
bench --paths cosyfast --concurrency 1,64 --new-tokens 200 --engine-option async_=0 --label cosyfast-async0 --out "$OUT/v_async0"
bench --paths cosyfast --concurrency 64,128,256 --new-tokens 200 --replicas 2 --label cosyfast-r2 --out "$OUT/v_r2"
bench --paths cosyfast --concurrency 64,128,256 --new-tokens 200 --replicas 4 --label cosyfast-r4 --out "$OUT/v_r4"
python3 - <<'PY' >> "$OUT/variants.log"
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*/results.jsonl")):
    for line in open(f):
        r = json.loads(line); print(r["path"], r["concurrency"], r["tok_per_s"], r["ms_per_token_p50"], r["extra"])
PY
tail -20 "$OUT/variants.log"
