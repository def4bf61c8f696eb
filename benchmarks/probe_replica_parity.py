"""Probe: do greedy tokens of 64 concurrent sessions equal their solo runs, with one TurboMind
instance and with several in one process? Separates batch-size numerics from cross-instance effects.
Run on the GPU machine after benchmarks/gpu_run.sh has set TurboMind up."""
import json
import os
import sys

import numpy as np

import cosyfast
from cosyfast.checkpoint import load_checkpoint
from cosyfast.synthetic import ensure_default_model

weights = load_checkpoint(ensure_default_model(kind="cosyvoice2", size="full"))
rng = np.random.default_rng(0)
reqs = [(rng.integers(0, 151643, 30).tolist(), rng.integers(0, 151643, 16).tolist(),
         rng.integers(0, 6561, 100).tolist()) for _ in range(64)]
opts = dict(top_k=1, ras=False, max_len=40, min_len=40, seed=0)
results = {}
for replicas in [int(x) for x in sys.argv[1:]] or [1, 4]:
    model = cosyfast.load(weights, engine="turbomind", replicas=replicas, cache_max_entry_count=0.3)
    solo = [model.generate(*reqs[i], **opts) for i in range(0, 64, 8)]
    streams = [model.stream(*r, **opts) for r in reqs]
    together = [s.drain() for s in streams]
    div = [next((k for k, (a, b) in enumerate(zip(together[i * 8], solo[i])) if a != b), 40) for i in range(8)]
    results[replicas] = dict(first_divergence=div, solo=solo)
    print(json.dumps({"replicas": replicas, "first_divergence": div}), flush=True)
    model.close()
same_solo = all(a == b for a, b in zip(*(r["solo"] for r in results.values())))
print(json.dumps({"solo_equal_across_replica_counts": same_solo}), flush=True)
with open(os.path.join(os.environ.get("OUT", "."), "replica_parity.json"), "w") as f:
    json.dump(results, f)
