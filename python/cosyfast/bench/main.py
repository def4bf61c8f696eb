"""Runs the paths over a concurrency sweep on one workload and writes JSONL + markdown (+ PNG)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Iterator

from .._paths import atomic_write_text
from .metrics import gpu_memory_used_mb, markdown_table, overhead, summarize
from .workload import Workload

# serve: the same workload over HTTP; host: through the C++ harness cosyfast-load, in a child process
PATHS = ("cosyfast", "turbomind-native", "hf", "serve", "host")
OPT_IN_PATHS = ("serve", "host")  # serve needs the serve extra; host measures the C API, not the package


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except Exception:  # noqa: BLE001
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted({r["path"] for r in rows}):
        rs = sorted((r for r in rows if r["path"] == path), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rs]
        a.plot(xs, [r["tok_per_s"] for r in rs], "o-", label=path)
        b.plot(xs, [r["ms_per_token_p50"] for r in rs], "o-", label=path)
    for ax, title in ((a, "throughput (tokens/s)"), (b, "ms per token, p50")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def round_breakdown(before: dict, after: dict) -> dict:
    """Mean milliseconds per engine round spent submitting, waiting and reading (replica 0), rounds
    run and, where the engine counts them, its iterations per round (1 when every round's requests
    share one iteration), between two `Model.stats` snapshots."""
    if "rounds" not in after:  # TurboMind runs its own loop: no rounds, only its iterations
        tm: dict = {"engine_iterations": after.get("engine_iterations", 0) - before.get("engine_iterations", 0)}
        graphs_after, graphs_before = after.get("decode_graph_steps"), before.get("decode_graph_steps")
        if graphs_after and graphs_before and graphs_after != graphs_before:  # how often a step ran eagerly
            tm["decode_graph_steps"] = {k: graphs_after[k] - graphs_before[k] for k in graphs_after}
        return tm
    rounds = after["rounds"] - before["rounds"]
    out: dict = {"rounds": rounds, "replicas": len(after.get("engine_profiles", [])) or 1}
    if "engine_iterations" in after and "engine_iterations" in before and rounds > 0:
        out["iterations_per_round"] = round((after["engine_iterations"] - before["engine_iterations"]) / rounds, 3)
    if "engine_profiles" in after and after["engine_profiles"]:
        a, b = after["engine_profiles"][0], before["engine_profiles"][0]
        n = max(a["rounds"] - b["rounds"], 1)
        for k in ("submit_s", "wait_s", "read_s"):
            out[k.replace("_s", "_ms_per_round")] = round((a[k] - b[k]) / n * 1000, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cosyfast bench", description=__doc__)
    p.add_argument("--checkpoint", help="llm.pt or model dir (default: the full-size synthetic CV2 model)")
    p.add_argument("--kind", default="cosyvoice2", choices=["cosyvoice2", "cosyvoice3"])
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--engine", default="auto", choices=["auto", "cpu", "turbomind"])
    p.add_argument("--paths", default=",".join(x for x in PATHS if x not in OPT_IN_PATHS),
                   help="comma list of " + ", ".join(PATHS) + " (default: all but " + ", ".join(OPT_IN_PATHS) + ")")
    p.add_argument("--concurrency", default="1,4,16,64,128,256")
    p.add_argument("--prompt-rows", type=int, default=150)
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--hf-new-tokens", type=int, default=None, help="fewer tokens for the slow hf baseline")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per point; the median run is kept")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--replicas", type=int, default=None,
                   help="engine instances (default: 1 per GPU on turbomind, 1 on cpu)")
    p.add_argument("--lanes", type=int, default=None, help="scheduler lanes per replica (default: the Model's)")
    p.add_argument("--sample-threads", type=int, default=None,
                   help="helper threads per lane that share a large round's sampling (default: the Model's)")
    p.add_argument("--devices", default=None, help="comma list of GPU ids the replicas are spread over")
    p.add_argument("--gpu-memory", type=float, default=None,
                   help="turbomind: GPU memory budget per GPU, GB (or a fraction <= 1); default: what max-batch "
                        "sessions need")
    p.add_argument("--label", default="cosyfast", help="path name for the cosyfast rows (e.g. cosyfast-r2)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="turbomind engine option, e.g. async_=0 (repeatable)")
    p.add_argument("--client-procs", type=int, default=None,
                   help="serve path: client processes the requests are spread over (default: min(concurrency, 8, "
                        "cores / 2)); their CPU time is recorded")
    p.add_argument("--serve-flush-ms", type=float, action="append", default=None, metavar="MS",
                   help="serve path: the service's --flush-ms (repeatable: one row set per value, labelled "
                        "serve-flush<MS>ms; default: the service's default, rows labelled serve)")
    p.add_argument("--out", default="bench-out", help="directory for results.jsonl, results.md, results.png")
    p.add_argument("--plot", action="store_true")
    args = p.parse_args(argv)

    from .. import load
    from ..checkpoint import load_checkpoint
    from ..synthetic import ensure_default_model
    from .runs import run_cosyfast, run_hf, run_turbomind_native

    paths = [x for x in args.paths.split(",") if x]
    bad = [x for x in paths if x not in PATHS]
    if bad:
        p.error(f"unknown path(s) {bad}; choose from {PATHS}")
    sweep = [int(x) for x in args.concurrency.split(",")]
    ckpt = Path(args.checkpoint) if args.checkpoint else ensure_default_model(kind=args.kind, size=args.size)
    weights = load_checkpoint(ckpt)
    work = Workload(prompt_rows=args.prompt_rows, new_tokens=args.new_tokens)
    engine_options = {k: int(v) if v.lstrip("-").isdigit() else float(v)
                      for k, v in (o.split("=", 1) for o in args.engine_option)}
    devices = [int(d) for d in args.devices.split(",")] if args.devices else None
    if args.gpu_memory is not None:
        engine_options["gpu_memory"] = args.gpu_memory
    model = load(weights, engine=args.engine, max_batch=max(args.max_batch, max(sweep)), replicas=args.replicas,
                 lanes=args.lanes, sample_threads=args.sample_threads, devices=devices, **engine_options)
    device = _device_name()
    print(f"bench: {weights.kind} {args.size} on {model.engine}, {device}; prompt {work.prompt_rows} rows, "
          f"{work.new_tokens} tokens per request; paths {paths}; sweep {sweep}", flush=True)

    rows: list[dict] = []
    out = Path(args.out)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "device": device, "checkpoint": str(ckpt),
            # the engine's measuring knobs (the decode GEMM row limits) change what a row measured
            "env": {k: v for k, v in sorted(os.environ.items()) if k.endswith("_MAX_ROWS") and k.startswith("COSYFAST_")}}

    def write_rows() -> None:
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r | {"meta": meta}) + "\n" for r in rows))
        atomic_write_text(out / "results.md", f"device: {device}\n\n" + markdown_table(rows) + "\n")

    def record(res) -> None:
        row = res.row() | {"engine": model.engine, "device": device, "kind": weights.kind,
                           "gpu_memory": getattr(model, "gpu_memory", []),
                           "prompt_rows": work.prompt_rows, "new_tokens_per_request": res.tokens // res.concurrency}
        rows.append(row)
        write_rows()  # after every row: a run cut short (a time limit, a failing path) keeps what it measured
        print(f"  {res.path:17s} conc {res.concurrency:4d}: {res.tok_per_s:9.1f} tok/s  "
              f"{res.ms_per_token_p50:7.2f} ms/tok p50  first {res.first_token_ms_p50:8.1f} ms  rtf {res.rtf:.4f}"
              + (f"  iterations/round {res.extra['iterations_per_round']}" if "iterations_per_round" in res.extra else "")
              + (f"  +{res.extra['overhead_us_per_token']} us/token over in-process" if "overhead_us_per_token" in res.extra
                 else "")
              + (f"  clients: {res.extra['client_procs']} procs, {res.extra['client_cpu_s']} cpu-s" if "client_cpu_s"
                 in res.extra else ""),
              flush=True)
        if res.extra.get("first_token_timeline_ms"):  # printed too: a call cut short keeps its output
            print("    first token p50 ms after the go: " + ", ".join(
                f"{stage} {p50_p90[0]}" for stage, p50_p90 in res.extra["first_token_timeline_ms"].items()), flush=True)

    def median_run(fn, repeats: int):
        runs = sorted((fn() for _ in range(repeats)), key=lambda r: r[0])
        return runs[len(runs) // 2]

    if "cosyfast" in paths:
        warm = Workload(prompt_rows=work.prompt_rows, new_tokens=8)
        run_cosyfast(model, warm, warm.requests(min(8, max(sweep)), weights.kind))  # untimed warm-up
        for c in sweep:
            reqs = work.requests(c, weights.kind)
            before = model.stats
            wall, arr = median_run(lambda: run_cosyfast(model, work, reqs), args.repeats)
            record(summarize(args.label, c, wall, arr, gpu_memory_used_mb(), lanes=model.lanes,
                             **round_breakdown(before, model.stats)))
    if "turbomind-native" in paths:
        if model.engine != "turbomind":
            print("  turbomind-native: skipped (needs the turbomind engine)", flush=True)
        else:
            warm = Workload(prompt_rows=work.prompt_rows, new_tokens=8)
            run_turbomind_native(model, warm, warm.requests(4, weights.kind))
            for c in sweep:
                reqs = work.requests(c, weights.kind)
                wall, arr = median_run(lambda: run_turbomind_native(model, work, reqs), args.repeats)
                record(summarize("turbomind-native", c, wall, arr, gpu_memory_used_mb()))
    if "hf" in paths:
        hf_work = Workload(prompt_rows=work.prompt_rows, new_tokens=args.hf_new_tokens or work.new_tokens)
        dev = "cuda" if "cpu (" not in device else "cpu"
        req = hf_work.requests(1, weights.kind)[0]
        run_hf(weights, Workload(prompt_rows=work.prompt_rows, new_tokens=8), req, dev)  # warm-up
        wall, arr = run_hf(weights, hf_work, req, dev)
        record(summarize("hf", 1, wall, arr, gpu_memory_used_mb()))

    inprocess = {r["concurrency"]: r for r in rows if r["path"] == args.label}

    def record_against_inprocess(res) -> None:
        if res.concurrency in inprocess:  # the in-process row of this call, same workload
            res.extra.update(overhead(res.row(), inprocess[res.concurrency]))
        record(res)

    failed: list[str] = []

    def record_path(name: str, results: Iterator) -> None:
        """An out-of-process path's rows, each recorded as it comes; one that fails is reported
        (traceback now, a line after the table, the exit status) and leaves the others to run."""
        try:
            for res in results:
                record_against_inprocess(res)
        except Exception as e:
            traceback.print_exc()
            failed.append(f"{name} path failed: {type(e).__name__}: {e}")

    if "serve" in paths:
        from .serve_path import serve_results

        record_path("serve", (res for flush_ms in args.serve_flush_ms or [None]
                              for res in serve_results(model, work, weights.kind, sweep,
                                                       lambda fn: median_run(fn, args.repeats), args.client_procs,
                                                       flush_ms)))
    if "host" in paths:
        from .host_path import host_results, model_flags

        flags = model_flags(model.engine, max(args.max_batch, max(sweep)), model.replicas, devices, args.gpu_memory)
        record_path("host", host_results(weights, work, sweep, flags, lambda fn: median_run(fn, args.repeats)))

    write_rows()
    if args.plot:
        plot(rows, out / "results.png")
    print(markdown_table(rows))
    for why in failed:
        print(f"bench: the {why}", file=sys.stderr)  # after the table: the last thing a reader sees
    model.close()
    return 1 if failed else 0
