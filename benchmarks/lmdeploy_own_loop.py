"""lmdeploy's own generation loop (its Python async API, TurboMind's own sampler, no RAS, no bias) on
cosyfast's exported model of the full-size synthetic CosyVoice2: the figure the lmdeploy version
is chosen by (third_party/README.md). Runs with whichever lmdeploy is importable:

  python3 benchmarks/lmdeploy_own_loop.py --concurrency 1,64,256 --new-tokens 500

With cosyfast's source-built engine (no lmdeploy wheel of its own), pass --cosyfast-engine: the
`_turbomind` compiled into cosyfast is registered first (CosyVoice sampling stays off, so this is
TurboMind's own code path). Warm-up excluded; one line of JSON per concurrency."""
from __future__ import annotations

import argparse
import asyncio
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", default="1,64,256")
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--prompt-rows", type=int, default=150)
    p.add_argument("--cosyfast-engine", action="store_true")
    args = p.parse_args()

    import torch

    if args.cosyfast_engine:
        from cosyfast.turbomind import _bound_modules

        _bound_modules()  # lmdeploy's binding from cosyfast._core, with lmdeploy's own factory (GIL taken)
    import lmdeploy
    from lmdeploy import GenerationConfig, TurbomindEngineConfig
    from lmdeploy.turbomind import TurboMind

    from cosyfast.bench.workload import Workload, prompt_rows
    from cosyfast.checkpoint import load_checkpoint
    from cosyfast.export import export_turbomind
    from cosyfast.synthetic import ensure_default_model

    weights = load_checkpoint(ensure_default_model(kind="cosyvoice2", size="full"))
    model_dir = export_turbomind(weights)
    sweep = [int(c) for c in args.concurrency.split(",")]
    tm = TurboMind.from_pretrained(str(model_dir), engine_config=TurbomindEngineConfig(
        dtype="bfloat16", max_batch_size=max(sweep), session_len=4096, cache_max_entry_count=0.3))
    work = Workload(prompt_rows=args.prompt_rows, new_tokens=args.new_tokens)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, ignore_eos=True, top_k=25, top_p=0.8, temperature=1.0)

    async def one(sid: int, rows: torch.Tensor) -> int:
        inst = tm.create_instance()
        n = 0
        async for out in inst.async_stream_infer(sid, [0] * rows.shape[0], input_embeddings=[rows],
                                                 input_embedding_ranges=[[0, rows.shape[0]]], gen_config=gen,
                                                 stream_output=True):
            n += len(out.token_ids)  # each output holds the tokens new since the last (0.14 and 0.16)
        return n

    async def run(c: int, base: int) -> tuple[int, float]:
        prompts = [torch.from_numpy(prompt_rows(weights, r)).to(torch.bfloat16) for r in work.requests(c, weights.kind)]
        t0 = time.perf_counter()
        counts = await asyncio.gather(*[one(base + i, x) for i, x in enumerate(prompts)])
        return sum(counts), time.perf_counter() - t0

    asyncio.run(run(4, 1 << 20))  # warm-up
    for j, c in enumerate(sweep):
        n, wall = asyncio.run(run(c, (j + 2) << 20))
        print(json.dumps({"lmdeploy": lmdeploy.__version__, "concurrency": c, "tokens": n,
                          "tok_per_s": round(n / wall, 1), "ms_per_token": round(wall / (n / c) * 1000, 3)}),
              flush=True)
        assert n == c * args.new_tokens, f"{n} tokens for {c} x {args.new_tokens}"


if __name__ == "__main__":
    main()
