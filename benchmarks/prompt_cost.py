"""What building one TurboMind prompt costs (issue 19: the starter thread builds one per request,
so its cost spaces a burst's submissions): `_core.testing.turbomind_prompt` with speech_as_ids,
the checks and the ids and bf16 rows TurboMind is sent, for the bench's request (150-row prompt:
52 rows of 896 values, the prompt speech as ids) on full-size random tables. Medians of ROUNDS
rounds of 500 calls, per call, Python's call overhead and the rows' numpy copy included (the same
for every build it is compared on).

    python benchmarks/prompt_cost.py [--table-dtype float32|bfloat16] [--rounds 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from cosyfast import _core
    from cosyfast.bench.workload import Workload
    from cosyfast.checkpoint import load_checkpoint
    from cosyfast.synthetic import ensure_default_model

    vocab = load_checkpoint(ensure_default_model(kind="cosyvoice2", size="tiny")).vocab
    hidden, rng = 896, np.random.default_rng(0)
    tables = _core.PromptTables(
        text_embedding=rng.standard_normal((151936, hidden), dtype=np.float32) * 0.02,
        speech_embedding=rng.standard_normal((vocab["decoder_rows"], hidden), dtype=np.float32) * 0.02,
        sos=np.zeros(hidden, np.float32), task_id=np.ones(hidden, np.float32), table_dtype=args.table_dtype)
    r = dataclasses.asdict(Workload(prompt_rows=150, new_tokens=500).requests(1, "cosyvoice2")[0])
    call = (tables, vocab, r["text_ids"], r["prompt_text_ids"], r["prompt_speech_tokens"], 4096, True)
    out = _core.testing.turbomind_prompt(*call)
    per_call = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(500):
            _core.testing.turbomind_prompt(*call)
        per_call.append((time.perf_counter() - t0) / 500 * 1e6)
    print(f"turbomind_prompt, {args.table_dtype} tables, rows {out['rows'].shape}: "
          f"{statistics.median(per_call):.1f} us per call (median of {args.rounds} rounds of 500; "
          f"every round: {[round(v, 1) for v in per_call]})")


if __name__ == "__main__":
    main()
