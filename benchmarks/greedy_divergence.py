"""Where greedy streams part from float32, and how close the float32 choice was there.

For random-weight CosyVoice2 models of 2 and 24 layers (full width: hidden 896, 14 heads), 10
prompts each: greedy decoding (every stop id masked, `--tokens` steps) by
  - HF transformers in float32 (the reference),
  - HF transformers in bfloat16 (what bf16 alone does),
  - the bf16 engine (TurboMind) with fast_decode on (cuBLASLt decode GEMMs) and off (as shipped).
For each stream: the first position where it parts from the float32 stream and the float32 top-1
minus top-2 log-prob margin there (nats; the contexts are equal up to that position, so the margin
is the float32 model's own). If the engine's rounding were no worse than bf16's, it parts no earlier
than HF bf16 over the prompts taken together. One JSON line per (layers, prompt, stream), then a
summary per (layers, stream); DIR/greedy_divergence.jsonl.

    python benchmarks/greedy_divergence.py [--layers 2,24] [--prompts 10] [--tokens 64] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def first_parting(stream: list[int], ref: list[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(stream, ref)) if a != b), None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="2,24")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default="greedy-divergence")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import cosyfast
    from cosyfast._paths import atomic_write_text
    from cosyfast.bench.hf_reference import HfCosyVoice
    from cosyfast.checkpoint import load_checkpoint
    from cosyfast.synthetic import SIZES, write_model_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_out: list[dict] = []
    n = args.tokens
    for layers in (int(x) for x in args.layers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = write_model_dir(Path(tmp) / "m", kind="cosyvoice2", size=dict(SIZES["full"], layers=layers),
                                        seed=layers)
            weights = load_checkpoint(model_dir)
            rng = np.random.default_rng(layers)
            prompts = [(rng.integers(0, 151643, 30).tolist(), rng.integers(0, 151643, 16).tolist(),
                        rng.integers(0, 6561, 100).tolist()) for _ in range(args.prompts)]
            streams: dict[str, list[list[int]]] = {}
            hf32 = HfCosyVoice(model_dir, torch.float32)
            ref_margins = []
            streams["hf-float32"] = []
            for text, ptext, pspeech in prompts:
                toks, margins = hf32.greedy(hf32.prompt(text, ptext, pspeech), n, with_margins=True)
                streams["hf-float32"].append(toks)
                ref_margins.append(margins)
            del hf32
            hf16 = HfCosyVoice(model_dir, torch.bfloat16)
            streams["hf-bfloat16"] = [hf16.greedy(hf16.prompt(*pr), n) for pr in prompts]
            del hf16
            torch.cuda.empty_cache()
            for name, fast in (("engine-fast-decode", True), ("engine-shipped-gemms", False)):
                m = cosyfast.load(weights, engine="turbomind", max_batch=16, cache_max_entry_count=0.1,
                                  fast_decode=fast)
                streams[name] = [m.generate(t, pt, ps, top_k=1, ras=False, min_len=n, max_len=n, seed=1)
                                 for t, pt, ps in prompts]
                m.close()
            for name, per_prompt in streams.items():
                if name == "hf-float32":
                    continue
                parts, margins = [], []
                for i, s in enumerate(per_prompt):
                    at = first_parting(s, streams["hf-float32"][i])
                    margin = ref_margins[i][at] if at is not None else None
                    row = {"layers": layers, "prompt": i, "stream": name, "parts_at": at, "float32_margin": margin,
                           "median_float32_margin": statistics.median(ref_margins[i])}
                    rows_out.append(row)
                    print(json.dumps(row), flush=True)
                    parts.append(at if at is not None else n)
                    if margin is not None:
                        margins.append(margin)
                summary = {"layers": layers, "stream": name, "summary": True, "tokens": n,
                           "parted": sum(1 for x in parts if x < n), "prompts": len(parts),
                           "parts_at": parts, "sum_parts_at": sum(parts),
                           "median_parts_at": statistics.median(parts),
                           "margins_at_parting": [round(x, 4) for x in margins],
                           "all_float32_margins_median": statistics.median(x for ms in ref_margins for x in ms)}
                rows_out.append(summary)
                print(json.dumps(summary), flush=True)
    for name in sorted({r["stream"] for r in rows_out if r["stream"].startswith("engine")}):
        row = paired(rows_out, name, "hf-bfloat16", n)
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    atomic_write_text(out / "greedy_divergence.jsonl", "".join(json.dumps(r) + "\n" for r in rows_out))


def paired(rows: list[dict], stream: str, reference: str, tokens: int) -> dict:
    """The question of the study, over every (layers, prompt) taken together: does `stream` part
    from float32 no earlier than `reference` does? Prompt by prompt: later, earlier, the same
    token (a stream that never parts counts as `tokens`)."""
    def parts(name: str) -> dict[tuple[int, int], int]:
        return {(r["layers"], r["prompt"]): tokens if r["parts_at"] is None else r["parts_at"]
                for r in rows if r.get("stream") == name and "prompt" in r}

    mine, ref = parts(stream), parts(reference)
    pairs = [(mine[k], ref[k]) for k in sorted(mine) if k in ref]
    return {"paired": True, "stream": stream, "vs": reference, "prompts": len(pairs),
            "later": sum(a > b for a, b in pairs), "earlier": sum(a < b for a, b in pairs),
            "same": sum(a == b for a, b in pairs), "sum_parts_at": sum(a for a, _ in pairs),
            "sum_parts_at_vs": sum(b for _, b in pairs), "no_earlier": sum(a for a, _ in pairs) >= sum(b for _, b in pairs)}


if __name__ == "__main__":
    main()
