#!/usr/bin/env bash
# The two-GPU session (kind nvidia-h200-x2) in one call: the recorded three-path run on
# GPU 0, then cosyfast over both GPUs at 128 and 256 sessions.
#   bash benchmarks/gpu_session_x2.sh      (from the repo root; results in $OUT)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; export OUT NCCL_NVLS_ENABLE=0
bash benchmarks/gpu_run.sh bench --paths cosyfast,turbomind-native,hf --concurrency 1,16,64,128,256 \
  --new-tokens 500 --devices 0
source /tmp/tm_env.sh; cd /tmp
python3 -m cosyfast.bench --paths cosyfast --concurrency 128,256 --new-tokens 500 --devices 0,1 \
  --label cosyfast-2gpu --out "$OUT/two_gpu" 2>&1 | grep -E "^  [a-z]"
# A lead of NOTES.md: each engine sized for the sessions it can get (max_batch 64 at 64 sessions).
python3 -m cosyfast.bench --paths cosyfast --concurrency 64 --new-tokens 500 --devices 0 --max-batch 64 \
  --label cosyfast-mb64 --out "$OUT/mb64" 2>&1 | grep -E "^  [a-z]"
python3 - <<'PY' > "$OUT/all_rows.txt"
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*/results.jsonl")):
    for line in open(f):
        r = json.loads(line); print(r["path"], r["concurrency"], r["tok_per_s"], r["ms_per_token_p50"], r["first_token_ms_p50"], r["extra"])
PY
rm -f "$OUT/two_gpu/results.md" "$OUT/mb64/results.md" "$OUT/bench.log"
cat "$OUT/all_rows.txt"
