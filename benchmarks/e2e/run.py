"""CosyVoice end to end: upstream's CosyVoice2Model / CosyVoice3Model.tts(), streaming and not,
from N concurrent threads, as shipped (its PyTorch LLM loop) and after
`cosyfast.cosyvoice.patch(model)`, in one process, on the same requests and token counts.

Each request is what CosyVoice2.inference_zero_shot passes to model.tts() after its frontend
(text ids, prompt text ids, prompt speech tokens, prompt mel, speaker embedding; benchmarks/e2e/
upstream.py says what is built how and what is bypassed). The LLM's stop rows are suppressed, so
every request decodes exactly max_len = 20 x text ids tokens in both configurations.

Measured per (model, configuration, mode, concurrency): first audio chunk latency (request start to
the first PCM chunk out of HiFT, as tts() yields it), RTF per stream (request wall / its audio
seconds), audio seconds per wall second (all streams), peak device memory, and where a request's
time goes: llm_job, token2wav, and inside it flow.inference and hift.inference (timestamps from
wrappers around those methods; the flow and HiFT wrappers synchronise the current CUDA stream so
that their time is the GPU's, not the launch's).

    python benchmarks/e2e/run.py --out $OUT/e2e                    # the recorded run (GPU)
    python benchmarks/e2e/run.py --quick --out /tmp/e2e            # a minute's smoke run
    python benchmarks/e2e/run.py --size tiny --engine cpu --out /tmp/e2e-cpu --quick   # CPU dry run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import upstream  # noqa: E402

MODELS = {"cv2": "cosyvoice2", "cv3": "cosyvoice3"}


# ----------------------------------------------------------------------------------------------
# Timestamps around upstream's methods
# ----------------------------------------------------------------------------------------------

@dataclass
class Trace:
    """One request's timestamps (perf_counter seconds), keyed by tts()'s uuid."""

    llm: list[tuple[float, float]] = field(default_factory=list)
    token2wav: list[tuple[float, float]] = field(default_factory=list)
    flow: list[tuple[float, float]] = field(default_factory=list)
    hift: list[tuple[float, float]] = field(default_factory=list)
    tokens: int = -1


class Timers:
    """Wraps model.llm_job, model.token2wav, model.flow.inference and model.hift.inference (as
    instance attributes: tts() calls them through self) and records their intervals per request.
    llm_job runs in the thread tts() starts; token2wav, flow and HiFT in the consumer's thread."""

    def __init__(self, model: Any, sync: bool) -> None:
        self.model = model
        self.traces: dict[str, Trace] = defaultdict(Trace)
        self.local = threading.local()
        self.lock = threading.Lock()
        cuda = sync and model.device.type == "cuda"
        self._sync: Callable[[], None] = (lambda: torch.cuda.current_stream().synchronize()) if cuda else (lambda: None)
        llm_job, token2wav = model.llm_job, model.token2wav
        flow_inference, hift_inference = model.flow.inference, model.hift.inference

        def timed_llm_job(text: Any, prompt_text: Any, speech: Any, embedding: Any, uuid: str) -> None:
            t0 = time.perf_counter()
            try:
                llm_job(text, prompt_text, speech, embedding, uuid)
            finally:
                t1 = time.perf_counter()
                with self.lock:
                    trace = self.traces[uuid]
                    trace.llm.append((t0, t1))
                    trace.tokens = len(model.tts_speech_token_dict.get(uuid, ()))

        def timed_token2wav(*args: Any, **kwargs: Any) -> Any:
            self.local.uuid = kwargs["uuid"]
            return self._interval("token2wav", token2wav, args, kwargs)

        model.llm_job = timed_llm_job
        model.token2wav = timed_token2wav
        model.flow.inference = lambda *a, **k: self._interval("flow", flow_inference, a, k, sync=True)
        model.hift.inference = lambda *a, **k: self._interval("hift", hift_inference, a, k, sync=True)

    def _interval(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, sync: bool = False) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if sync:
            self._sync()
        t1 = time.perf_counter()
        with self.lock:
            getattr(self.traces[self.local.uuid], name).append((t0, t1))
        return out

    def take(self, uuid: str) -> Trace:
        with self.lock:
            return self.traces.pop(uuid)


class MemoryPeak:
    """Peak device memory in use (cudaMemGetInfo: every allocator, TurboMind's included) while
    the block runs, polled every 20 ms; None on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.peak_mb = cuda, 0.0
        self._stop = threading.Event()

    def _used_mb(self) -> float:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._used_mb())

    def __enter__(self) -> "MemoryPeak":
        if self.cuda:
            self.peak_mb = self._used_mb()
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._used_mb())

    def row(self) -> dict[str, float | None]:
        if not self.cuda:
            return {"gpu_mem_peak_mb": None, "torch_alloc_peak_mb": None}
        return {"gpu_mem_peak_mb": round(self.peak_mb, 1),
                "torch_alloc_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


# ----------------------------------------------------------------------------------------------
# One point: N threads, each one tts() request
# ----------------------------------------------------------------------------------------------

def _busy(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


class PointCut(TimeoutError):
    """A point that ran past --timeout: `row` is what it had produced by then (see cut_summary)."""

    def __init__(self, message: str, row: dict[str, Any]) -> None:
        super().__init__(message)
        self.row = row


def run_point(model: Any, timers: Timers, hop: upstream.PerRequestHop | None, requests: list[upstream.Request],
              concurrency: int, stream: bool, timeout: float) -> dict[str, Any]:
    """`concurrency` threads start together, each drives one model.tts() to its end. Past
    `timeout` raises PointCut with what the requests had produced by then."""
    barrier = threading.Barrier(concurrency)
    done: list[dict[str, Any] | None] = [None] * concurrency
    # each request's progress as it goes (start, first chunk, samples so far): a cut point's figures
    progress: list[dict[str, Any]] = [{"start": None, "first": None, "samples": 0, "ended": False}
                                      for _ in range(concurrency)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            kwargs = requests[i % len(requests)].tts_kwargs()
            barrier.wait()
            if hop is not None:
                hop.reset()
            t0 = time.perf_counter()
            mine = progress[i]
            mine["start"] = t0
            first = None
            samples = chunks = 0
            for out in model.tts(**kwargs, stream=stream):
                first = first or time.perf_counter()
                mine["first"] = first
                samples += int(out["tts_speech"].shape[1])
                mine["samples"] = samples
                chunks += 1
            mine["ended"] = True
            done[i] = dict(start=t0, first=first, end=time.perf_counter(), samples=samples, chunks=chunks,
                           uuid=timers.local.uuid)
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]!r}") from errors[0]
    running = sum(t.is_alive() for t in threads)
    if running:
        raise PointCut(f"{running} of {concurrency} requests still ran after {timeout} s",
                       cut_summary(progress, time.perf_counter(), timeout))
    reqs = [r for r in done if r is not None]
    for r in reqs:
        trace = timers.take(r["uuid"])
        r.update(tokens=trace.tokens, llm_s=_busy(trace.llm), token2wav_s=_busy(trace.token2wav),
                 flow_s=_busy(trace.flow), hift_s=_busy(trace.hift), flow_calls=len(trace.flow))
    return summarize(reqs)


def cut_summary(progress: list[dict[str, Any]], now: float, timeout: float) -> dict[str, Any]:
    """A point stopped at its timeout: how many requests had ended, had audio and a first chunk,
    the first chunks' latency among those that had one, and the audio produced per wall second
    while it ran (a measured rate, where the full point's figure is out of reach)."""
    starts = [p["start"] for p in progress if p["start"] is not None]
    t0 = min(starts) if starts else now
    first_ms = [(p["first"] - p["start"]) * 1000 for p in progress if p["first"] is not None]
    audio = sum(p["samples"] for p in progress) / upstream.SAMPLE_RATE
    return {"cut_after_s": timeout, "ended": sum(p["ended"] for p in progress),
            "requests": sum(p["samples"] > 0 for p in progress),
            "first_chunks": len(first_ms),
            "first_chunk_ms_p50": round(_pct(first_ms, 50), 1) if first_ms else None,
            "first_chunk_ms_p90": round(_pct(first_ms, 90), 1) if first_ms else None,
            "audio_s_by_cut": round(audio, 3), "audio_s_per_wall_s": round(audio / max(now - t0, 1e-9), 3)}


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarize(reqs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["end"] for r in reqs) - min(r["start"] for r in reqs)
    audio = [r["samples"] / upstream.SAMPLE_RATE for r in reqs]
    req_s = [r["end"] - r["start"] for r in reqs]
    first_ms = [(r["first"] - r["start"]) * 1000 for r in reqs]
    rtf = [s / a if a else float("inf") for s, a in zip(req_s, audio)]
    tokens = [r["tokens"] for r in reqs]

    def share(key: str) -> float:
        return round(statistics.fmean(r[key] / s for r, s in zip(reqs, req_s)), 4)

    return {
        "requests": len(reqs), "wall_s": round(wall, 3),
        "tokens_min": min(tokens), "tokens_max": max(tokens),
        "audio_s_per_request": round(statistics.fmean(audio), 3),
        "first_chunk_ms_p50": round(_pct(first_ms, 50), 1), "first_chunk_ms_p90": round(_pct(first_ms, 90), 1),
        "rtf_p50": round(_pct(rtf, 50), 4), "rtf_p90": round(_pct(rtf, 90), 4),
        "audio_s_per_wall_s": round(sum(audio) / wall, 3),
        "request_s_mean": round(statistics.fmean(req_s), 3),
        "llm_s_mean": round(statistics.fmean(r["llm_s"] for r in reqs), 3),
        "token2wav_s_mean": round(statistics.fmean(r["token2wav_s"] for r in reqs), 3),
        "flow_s_mean": round(statistics.fmean(r["flow_s"] for r in reqs), 3),
        "hift_s_mean": round(statistics.fmean(r["hift_s"] for r in reqs), 3),
        "llm_share": share("llm_s"), "token2wav_share": share("token2wav_s"),
        "flow_share": share("flow_s"), "hift_share": share("hift_s"),
        "llm_ms_per_token": round(statistics.fmean(r["llm_s"] / max(r["tokens"], 1) for r in reqs) * 1000, 2),
        "chunks_per_request": round(statistics.fmean(r["chunks"] for r in reqs), 2),
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over repeats (numbers); the first row's value otherwise."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("concurrency", "repeat"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if not vals:
                out[key] = None
            elif all(isinstance(v, int) for v in vals):
                out[key] = statistics.median_low(vals)
            else:
                out[key] = round(float(statistics.median(vals)), 4)
    out["repeats"] = len(rows)
    out.pop("repeat", None)
    return out


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

TABLE = [("model", "model"), ("config", "config"), ("mode", "mode"), ("concurrency", "conc"),
         ("tokens_max", "tokens"), ("first_chunk_ms_p50", "first chunk p50 ms"),
         ("first_chunk_ms_p90", "first chunk p90 ms"), ("rtf_p50", "RTF p50"),
         ("audio_s_per_wall_s", "audio s / wall s"), ("llm_share", "LLM share"), ("flow_share", "flow share"),
         ("hift_share", "HiFT share"), ("llm_ms_per_token", "LLM ms/token"), ("gpu_mem_peak_mb", "GPU mem MB")]


def _point(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return row["model"], row["config"], row["mode"], row["concurrency"]


def load_earlier(paths: Sequence[Path], device: str) -> list[dict[str, Any]]:
    """The rows of earlier runs' results.jsonl (--merge), each marked with the command that
    measured it (from the run.json beside it, which must name this run's device: timings compare
    only on one kind of GPU)."""
    rows = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--merge: no file {path} (an earlier run's results.jsonl)")
        meta_path = path.with_name("run.json")
        if not meta_path.is_file():
            raise SystemExit(f"--merge: no run.json beside {path}: which device and command measured it?")
        meta = json.loads(meta_path.read_text())
        if meta.get("device") != device:
            raise SystemExit(f"--merge: {path} was measured on {meta.get('device')!r}, this run is on {device!r}")
        command = meta.get("command", "?")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                _point(row)
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"--merge: {path} line {n} is not a results row") from None
            rows.append(row | {"measured_by": row.get("measured_by", command)})
    return rows


def merge_rows(earlier: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table: this run's points, and the earlier runs' points it did not measure (a later
    file's point replaces an earlier file's, except that a point cut at its timeout never replaces
    a whole one), ordered by model, configuration, mode, streams."""
    by_point: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for r in [*earlier, *current]:
        held = by_point.get(_point(r))
        if held is None or "cut_after_s" not in r or "cut_after_s" in held:
            by_point[_point(r)] = r
    return sorted(by_point.values(), key=_point)


def cut_text(row: dict[str, Any]) -> str:
    """A point stopped at its timeout (cut_summary), in words: its table cell and its console line."""
    return (f"cut at {row['cut_after_s']:g} s: {row['ended']} of {row['concurrency']} ended, {row['first_chunks']} "
            f"with a first chunk, {row['audio_s_by_cut']:g} s of audio (audio/wall: while it ran)")


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "tokens_max" and "cut_after_s" in row:
        return cut_text(row)
    value = row.get(key)
    return "" if value is None else str(value)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = "| " + " | ".join(t for _, t in TABLE) + " |\n|" + "---|" * len(TABLE) + "\n"
    body = "".join("| " + " | ".join(_cell(r, k) for k, _ in TABLE) + " |\n" for r in rows)
    note = (f"\n{meta['device']}; upstream {meta['upstream']}; cosyfast {meta['cosyfast_commit']}; "
            f"LLM {meta['size']}, fp16 autocast {meta['fp16']}, engine {meta['engine']}; "
            f"{meta['tokens']} tokens per request; command: `{meta['command']}`\n")
    merged = sorted({r["measured_by"] for r in rows if "measured_by" in r})
    if merged:
        note += "Rows from earlier runs (--merge), each point with its baseline from its own run: " + \
            "; ".join(f"`{c}`" for c in merged) + "\n"
    return head + body + note


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("first_chunk_ms_p50", "first audio chunk p50 (ms), streaming", "stream"),
              ("rtf_p50", "RTF per stream p50, streaming", "stream"),
              ("audio_s_per_wall_s", "audio seconds per wall second, streaming", "stream"),
              ("llm_share", "LLM share of a request's wall time, offline", "offline")]
    if not any(r["mode"] == "offline" for r in rows):  # a streaming-only table: its own LLM share
        panels[-1] = ("llm_share", "LLM share of a request's wall time, streaming", "stream")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, title, mode) in zip(axes.flat, panels):
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            if r["mode"] == mode and r.get(key) is not None and "cut_after_s" not in r:  # a cut point: the table's
                series[f"{r['model']} {r['config']}"].append((r["concurrency"], r[key]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linestyle="-" if "cosyfast" in label else "--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if key != "llm_share":
            ax.set_yscale("log")
        if series:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    from cosyfast._paths import atomic_write_text  # at use, as this file's other cosyfast imports

    atomic_write_text(path, text)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=upstream.REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(allowed)}, got {text!r}")
        return values
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.{jsonl,md,png} and run.json")
    p.add_argument("--pack", type=Path, default=None, help="the offline pack (default $COSYFAST_E2E_PACK or .e2epack)")
    p.add_argument("--models", type=_names(list(MODELS)), default=["cv2", "cv3"])
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 64], help="CosyVoice2's concurrencies")
    p.add_argument("--cv3-concurrency", type=_ints, default=[1, 16], help="CosyVoice3's concurrencies")
    p.add_argument("--tokens", type=int, default=100, help="speech tokens per request (25 = 1 s of audio), "
                   "a multiple of 20")
    p.add_argument("--modes", type=_names(["stream", "offline"]), default=["stream", "offline"])
    p.add_argument("--configs", type=_names(["upstream", "cosyfast"]), default=["upstream", "cosyfast"])
    p.add_argument("--engine", default="auto", help="cosyfast's engine for the patched model (auto: turbomind on a GPU)")
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="the LLM (full: Qwen2-0.5B's shape)")
    p.add_argument("--small-flow", action="store_true", help="small flow/HiFT (default with --size tiny)")
    p.add_argument("--fp32", action="store_true", help="fp16=False (default: fp16=True, upstream's autocast)")
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the table keeps the median")
    p.add_argument("--hop", choices=["per-request", "shared"], default="per-request",
                   help="streaming hop growth per request (upstream's intent) or on the model (as shipped)")
    p.add_argument("--no-sync", action="store_true", help="no CUDA sync in the flow/HiFT timers")
    p.add_argument("--max-batch", type=int, default=None, help="cosyfast's max_batch (default: the largest concurrency)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds one point may take")
    p.add_argument("--deadline", type=float, default=520.0, help="seconds after the start past which no new "
                   "point starts (the skipped ones are listed in run.json), so the outputs are written "
                   "inside a 600 s call")
    p.add_argument("--merge", type=Path, nargs="*", default=[], metavar="RESULTS_JSONL",
                   help="earlier runs' results.jsonl: their points join this run's table and plot (a point this "
                        "run measures replaces theirs; results.jsonl keeps this run's rows only)")
    p.add_argument("--quick", action="store_true", help="CV2 and CV3 at 1 and 4 streams, 40 tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.cv3_concurrency, args.tokens = [1, 4], [1, 4], 40
    if args.tokens < 20 or args.tokens % 20:
        p.error(f"--tokens must be a positive multiple of 20, got {args.tokens}")
    return args


def run_config(args: argparse.Namespace, kind: str, config: str, model: Any, timers: Timers,
               hop: upstream.PerRequestHop | None, requests: list[upstream.Request], concurrencies: list[int],
               meta: dict[str, Any], emit: Callable[[dict[str, Any]], None], t_start: float) -> None:
    """Every mode and concurrency of one configuration. For "cosyfast" the model is patched first,
    its torch LLM parked on the CPU meanwhile (out of the GPU memory figures), and put back after,
    so that upstream's configuration may run after it (--configs cosyfast,upstream: the patched
    points first when upstream's may not finish in the call)."""
    cuda = model.device.type == "cuda"
    original = None
    if config == "cosyfast":
        import cosyfast.cosyvoice

        t1 = time.perf_counter()
        original = model.llm
        cosyfast.cosyvoice.patch(model, args.engine, max_batch=args.max_batch or max(max(concurrencies), 8))
        original.to("cpu")
        if cuda:
            torch.cuda.empty_cache()
        meta.setdefault("patch_s", {})[kind] = round(time.perf_counter() - t1, 1)
        meta["engine"] = model.llm.model.engine
    run_points(args, kind, config, model, timers, hop, requests, concurrencies, meta, emit, t_start)
    if original is not None:  # only after every point ended: a failed point stops the model instead
        model.llm.close()
        model.llm = original.to(model.device)


def run_points(args: argparse.Namespace, kind: str, config: str, model: Any, timers: Timers,
               hop: upstream.PerRequestHop | None, requests: list[upstream.Request], concurrencies: list[int],
               meta: dict[str, Any], emit: Callable[[dict[str, Any]], None], t_start: float) -> None:
    cuda = model.device.type == "cuda"
    # one untimed request per mode (CUDA kernels, allocator, TurboMind's first batch)
    for mode in args.modes:
        run_point(model, timers, hop, requests, 1, mode == "stream", args.timeout)
    for mode in args.modes:
        for c in concurrencies:
            if time.perf_counter() - t_start > args.deadline:
                meta.setdefault("skipped", []).append(f"{kind} {config} {mode} c={c}")
                print(f"  skipped (past --deadline {args.deadline:g} s): {kind} {config} {mode} c={c}", flush=True)
                continue
            rows = []
            for rep in range(args.repeats):
                with MemoryPeak(cuda) as mem:
                    try:
                        row = run_point(model, timers, hop, requests, c, mode == "stream", args.timeout)
                    except PointCut as cut:  # the point's row says how far it got; the model stops here
                        emit({"model": kind, "config": config, "mode": mode, "concurrency": c, **cut.row})
                        raise
                rows.append({"model": kind, "config": config, "mode": mode, "concurrency": c, "repeat": rep,
                             **row, **mem.row(),
                             "host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
                if row["tokens_min"] != args.tokens or row["tokens_max"] != args.tokens:
                    print(f"  warning: {kind} {config} {mode} c={c}: tokens {row['tokens_min']}..{row['tokens_max']}, "
                          f"expected {args.tokens}", flush=True)
            emit(median_row(rows))


def run_model(args: argparse.Namespace, kind: str, concurrencies: list[int], meta: dict[str, Any],
              emit: Callable[[dict[str, Any]], None], t_start: float) -> None:
    t0 = time.perf_counter()
    built = upstream.build(kind, pack=args.pack, size=args.size, fp16=not args.fp32,
                           small_flow=args.small_flow or None)
    model = built.model
    meta.setdefault("build_s", {})[kind] = round(time.perf_counter() - t0, 1)
    meta["fp16"] = built.fp16
    timers = Timers(model, sync=not args.no_sync)
    hop = upstream.PerRequestHop(model) if args.hop == "per-request" else None
    requests = [upstream.make_request(kind, args.tokens, seed=1000 + i) for i in range(max(concurrencies))]
    cuda = model.device.type == "cuda"
    try:
        for config in args.configs:
            run_config(args, kind, config, model, timers, hop, requests, concurrencies, meta, emit, t_start)
    except (RuntimeError, TimeoutError) as e:
        # A failed or overdue point ends this model (its threads may still run, which would skew
        # what follows); the rows so far are kept and the failure is recorded in run.json.
        meta.setdefault("failed", []).append(f"{kind}: {e}")
        print(f"  {kind} stopped: {e}", flush=True)
    if hasattr(model.llm, "close"):
        model.llm.close()
    del model, built
    if cuda:
        torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # upstream's torch.cuda.amp.autocast and diffusers' LoRACompatibleLinear warn on every call
    warnings.filterwarnings("ignore", category=FutureWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pack = upstream.pack_dir(args.pack)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": device_name(), "upstream": upstream.upstream_commits(pack) if (pack / "src").is_dir() else {},
        "cosyfast_commit": git_commit(), "size": args.size, "tokens": args.tokens, "engine": args.engine,
        "hop": args.hop, "fp16": not args.fp32, "torch": torch.__version__,
    }
    rows: list[dict[str, Any]] = []
    earlier = load_earlier(args.merge, meta["device"])
    jsonl = args.out / "results.jsonl"
    jsonl.unlink(missing_ok=True)

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if "cut_after_s" in row:
            print(f"  {row['model']} {row['config']:8s} {row['mode']:7s} c={row['concurrency']:<3d} {cut_text(row)} "
                  f"{row['audio_s_per_wall_s']:.2f}, first chunk p50 {row['first_chunk_ms_p50']} ms", flush=True)
        else:
            print(f"  {row['model']} {row['config']:8s} {row['mode']:7s} c={row['concurrency']:<3d} "
                  f"first chunk p50 {row['first_chunk_ms_p50']:8.1f} ms  RTF p50 {row['rtf_p50']:.3f}  "
                  f"audio/wall {row['audio_s_per_wall_s']:7.2f}  LLM share {row['llm_share']:.2f}  "
                  f"flow {row['flow_share']:.2f}  hift {row['hift_share']:.2f}  tokens {row['tokens_max']}  "
                  f"mem {row['gpu_mem_peak_mb']}", flush=True)
        write_outputs(with_plot=False)  # run.json and the table after every point: a killed call keeps them

    def write_outputs(with_plot: bool = True) -> None:
        meta["total_s"] = round(time.perf_counter() - t_start, 1)
        write_atomic(args.out / "run.json", json.dumps(meta, indent=1) + "\n")
        table = merge_rows(earlier, rows)
        write_atomic(args.out / "results.md", markdown(table, meta))
        if table and with_plot:
            plot(table, args.out / "results.png")

    for name in args.models:
        if time.perf_counter() - t_start > args.deadline:
            meta.setdefault("skipped", []).append(name)
            continue
        kind = MODELS[name]
        run_model(args, kind, args.concurrency if name == "cv2" else args.cv3_concurrency, meta, emit, t_start)
        write_outputs()  # after each model, so a cut-off call still leaves its tables
    write_outputs()
    print(f"done in {meta['total_s']} s: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
