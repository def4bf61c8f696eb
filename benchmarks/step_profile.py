"""Where a decode step goes, on the GPU engine: per step, the GPU busy time by kernel family, the
number of GPU operations and the launch-gap share (wall time the GPU sat idle), for any path and
batch size.

    python benchmarks/step_profile.py [--paths cosyfast,cosyfast-shipped,turbomind-native]
                                      [--concurrency 1,64] [--steps 300] [--out DIR]

Paths (one engine each, each in its own process, the same workload):
  cosyfast           the default engine (fast_decode: decode GEMMs through cuBLASLt; decode_graphs: the decode
                     steps' layers replayed from CUDA graphs), RAS sampler
  cosyfast-nographs  fast_decode on, decode_graphs off: every launch from the host
  cosyfast-shipped   fast_decode off: TurboMind's own GEMMs, RAS sampler
  turbomind-native   fast_decode off and TurboMind's own top-k/top-p sampler: TurboMind as shipped

torch.profiler with CUDA activities records every kernel of the process (CUPTI is process-wide), so
TurboMind's kernels are in the trace. What is timed: `concurrency` sessions that each generate
`steps` tokens after their prefill, under the profiler; the wall time per step includes the
profiler's own overhead (about +1 ms per step at batch 1), the GPU times do not. Prefill kernels
are in the totals too (one per session, amortised over the steps). Prints one JSON line per (path,
concurrency) and writes them to DIR/step_profile.jsonl.

Each path runs in a child process of its own: in session 12 (H100), four paths profiled one after
another in one process left two of them with a trace of 3-75 operations per step and no kernels
(CUPTI kept recording only some engines' streams), where a fresh process records ~260. A row whose
trace holds no GEMM kernel is marked "incomplete" and the run exits non-zero.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Kernel families by name (first match wins). cuBLAS's Hopper kernels are called nvjet_* / sm90_xmma*.
FAMILIES = [
    ("gemm", re.compile(r"gemm|Gemm|GEMM|nvjet|xmma|cutlass|cublas", re.I)),
    ("attention", re.compile(r"attention|Attention|decoding|Decoding|reduce_kernel|ProcessKV|flash", re.I)),
    ("norm", re.compile(r"Norm|norm")),
    ("activation", re.compile(r"Silu|silu|Activation|activation")),
    ("sampling", re.compile(r"CosyVoice|cosyvoice|[Ss]ampl|TopK|topk|TopP|topp|softmax|curand", re.I)),
    ("rope/bias", re.compile(r"[Rr]otary|rope|Rope|[Bb]ias")),
    ("tma-desc", re.compile(r"tma|TMA|tensormap|TensorMap")),
    ("memset", re.compile(r"[Mm]emset")),
    ("memcpy", re.compile(r"[Mm]emcpy")),
    ("embedding", re.compile(r"[Ee]mbedding|[Gg]ather")),
]


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if pattern.search(name):
            return fam
    return "other"


def busy_union_us(intervals: list[tuple[float, float]]) -> float:
    """Time the GPU ran anything (overlapping kernels counted once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def load_path(path: str, weights, max_batch: int):
    """The engine a path runs on (one load serves every batch size of the path)."""
    import cosyfast

    return cosyfast.load(weights, engine="turbomind", max_batch=max(max_batch, 8),
                         fast_decode=path in ("cosyfast", "cosyfast-nographs"), decode_graphs=path == "cosyfast")


def profile_path(path: str, model, concurrency: int, steps: int, weights, prompt_rows: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cosyfast.bench.runs import run_cosyfast, run_turbomind_native
    from cosyfast.bench.workload import Workload

    run = run_turbomind_native if path == "turbomind-native" else run_cosyfast
    warm = Workload(prompt_rows=prompt_rows, new_tokens=16)
    # untimed: first-use setup (and, with graphs, the captures of this batch size)
    run(model, warm, warm.requests(concurrency, weights.kind))
    work = Workload(prompt_rows=prompt_rows, new_tokens=steps)
    reqs = work.requests(concurrency, weights.kind)
    counts0 = _gemm_counts()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run(model, work, reqs)
        wall_us = (time.perf_counter() - t0) * 1e6
    counts1 = _gemm_counts()
    torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_family: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    intervals = []
    for e in events:
        by_family[family(e.name)] = by_family.get(family(e.name), 0.0) + e.device_time
        key = e.name[:80]
        by_kernel[key] = by_kernel.get(key, 0.0) + e.device_time
        start = e.time_range.start
        intervals.append((start, start + e.device_time))
    busy_sum = sum(by_family.values())
    busy = busy_union_us(intervals)
    ms = 1e-3 / steps
    return {
        "path": path, "concurrency": concurrency, "steps": steps, "prompt_rows": prompt_rows,
        "wall_ms_per_step": round(wall_us * ms, 3),
        "gpu_busy_ms_per_step": round(busy * ms, 3),
        "gpu_kernel_sum_ms_per_step": round(busy_sum * ms, 3),
        "launch_gap_share": round(1 - busy / wall_us, 3) if wall_us else None,
        "gpu_ops_per_step": round(len(events) / steps, 1),
        "families_ms_per_step": {k: round(v * ms, 4) for k, v in sorted(by_family.items(), key=lambda x: -x[1])},
        "top_kernels_ms_per_step": [(k, round(v * ms, 4)) for k, v in
                                    sorted(by_kernel.items(), key=lambda x: -x[1])[:12]],
        "decode_gemm": {"taken": counts1[0] - counts0[0], "left_to_turbomind": counts1[1] - counts0[1]},
        # every decode step runs 97 GEMMs: a trace without one missed the engine's kernels
        "incomplete": "gemm" not in by_family,
    }


def _gemm_counts() -> tuple[int, int]:
    from cosyfast import _core
    return tuple(_core._turbomind_decode_gemm_counts())  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--paths", default="cosyfast,cosyfast-shipped,turbomind-native")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--steps", type=int, default=300, help="tokens per session (after the prefill)")
    p.add_argument("--prompt-rows", type=int, default=150)
    p.add_argument("--kind", default="cosyvoice2", choices=["cosyvoice2", "cosyvoice3"])
    p.add_argument("--checkpoint", default=None, help="default: the full-size synthetic model")
    p.add_argument("--out", default="step-profile")
    args = p.parse_args(argv)

    from cosyfast._paths import atomic_write_text
    from cosyfast.checkpoint import load_checkpoint
    from cosyfast.synthetic import ensure_default_model

    paths = [x for x in args.paths.split(",") if x]
    if not paths:
        p.error("--paths names no path")
    for x in paths:
        if x not in ("cosyfast", "cosyfast-nographs", "cosyfast-shipped", "turbomind-native"):
            p.error(f"unknown path {x!r}")
    sweep = [int(x) for x in args.concurrency.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(paths) > 1:  # one child process per path: a fresh CUPTI session each (see the docstring)
        rows = []
        for path in paths:
            child_out = Path(tempfile.mkdtemp(prefix=f"step-profile-{path}-"))
            try:  # a child that fails leaves its rows out; the exit status says so
                subprocess.run([sys.executable, __file__, "--paths", path, "--concurrency", args.concurrency,
                                "--steps", str(args.steps), "--prompt-rows", str(args.prompt_rows), "--kind", args.kind,
                                "--out", str(child_out)] + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
                done = child_out / "step_profile.jsonl"
                rows += [json.loads(line) for line in done.read_text().splitlines()] if done.exists() else []
            finally:
                shutil.rmtree(child_out, ignore_errors=True)
            atomic_write_text(out / "step_profile.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        sys.exit(1 if any(r["incomplete"] for r in rows) or len(rows) < len(paths) * len(sweep) else 0)
    weights = load_checkpoint(Path(args.checkpoint) if args.checkpoint else
                              ensure_default_model(kind=args.kind, size="full"))
    rows = []
    model = load_path(paths[0], weights, max(sweep))
    try:
        for c in sweep:
            row = profile_path(paths[0], model, c, args.steps, weights, args.prompt_rows)
            rows.append(row)
            print(json.dumps(row), flush=True)
            # after every row: a call cut short by its time limit keeps what it measured
            atomic_write_text(out / "step_profile.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    finally:
        model.close()
    sys.exit(1 if any(r["incomplete"] for r in rows) else 0)


if __name__ == "__main__":
    main()
