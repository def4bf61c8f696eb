"""Summarises a torch.profiler (kineto) Chrome trace of TurboMind at work, for benchmarks/NOTES.md:
per CUDA stream, how its kernels group into engine iterations (a gap of more than --gap-us between
two kernels ends one), how long an iteration spans, how much of that span a kernel runs, how long
the stream then idles; plus the copies by kind and the host API calls the trace caught.

    python benchmarks/trace_summary.py TRACE.json[.gz] [--gap-us 150]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return [e for e in data.get("traceEvents", []) if e.get("ph") == "X"]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def iterations(kernels: list[tuple[float, float]], gap_us: float) -> list[tuple[float, float, float]]:
    """(start, end, busy) of each run of kernels whose gaps stay under gap_us."""
    out: list[tuple[float, float, float]] = []
    start = end = busy = None
    for ts, dur in sorted(kernels):
        if start is None:
            start, end, busy = ts, ts + dur, dur
        elif ts - end > gap_us:
            out.append((start, end, busy))
            start, end, busy = ts, ts + dur, dur
        else:
            end, busy = max(end, ts + dur), busy + dur
    if start is not None:
        out.append((start, end, busy))
    return out


def summarise(events: list[dict], gap_us: float) -> str:
    lines: list[str] = []
    by_stream: dict[str, list[tuple[float, float]]] = defaultdict(list)
    copies: dict[str, list[float]] = defaultdict(list)
    api: dict[str, list[float]] = defaultdict(list)
    for e in events:
        cat = e.get("cat", "")
        if cat == "kernel":
            by_stream[str(e.get("args", {}).get("stream", e.get("tid")))].append((float(e["ts"]), float(e["dur"])))
        elif cat in ("gpu_memcpy", "gpu_memset"):
            copies[e.get("name", cat)].append(float(e["dur"]))
        elif cat in ("cuda_runtime", "cuda_driver"):
            api[e.get("name", cat)].append(float(e["dur"]))
    all_kernels = [k for ks in by_stream.values() for k in ks]
    if all_kernels:
        t0 = min(ts for ts, _ in all_kernels)
        t1 = max(ts + d for ts, d in all_kernels)
        union = sum(b - a for a, b, _ in iterations(all_kernels, 0.0))
        lines.append(f"window {(t1 - t0) / 1000:.1f} ms; some kernel running {union / (t1 - t0) * 100:.0f}% of it")
    for stream, ks in sorted(by_stream.items(), key=lambda kv: -len(kv[1])):
        its = iterations(ks, gap_us)
        if len(its) < 2:
            lines.append(f"stream {stream}: {len(ks)} kernels, {len(its)} iteration(s)")
            continue
        spans = [b - a for a, b, _ in its]
        busy = [c for _, _, c in its]
        gaps = [its[i + 1][0] - its[i][1] for i in range(len(its) - 1)]
        per_it = len(ks) / len(its)
        lines.append(f"stream {stream}: {len(ks)} kernels in {len(its)} iterations (~{per_it:.0f} each); median span "
                     f"{median(spans) / 1000:.2f} ms, kernels busy {median(busy) / 1000:.2f} ms of it, then idle "
                     f"{median(gaps) / 1000:.2f} ms (p90 {sorted(gaps)[int(0.9 * (len(gaps) - 1))] / 1000:.2f})")
    for name, ds in sorted(copies.items(), key=lambda kv: -sum(kv[1]))[:8]:
        lines.append(f"copy {name}: {len(ds)} x median {median(ds):.1f} us, total {sum(ds) / 1000:.2f} ms")
    for name, ds in sorted(api.items(), key=lambda kv: -sum(kv[1]))[:12]:
        lines.append(f"api {name}: {len(ds)} x median {median(ds):.1f} us, total {sum(ds) / 1000:.2f} ms")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("trace", type=Path)
    p.add_argument("--gap-us", type=float, default=150.0)
    args = p.parse_args()
    print(summarise(load(args.trace), args.gap_us))


if __name__ == "__main__":
    main()
