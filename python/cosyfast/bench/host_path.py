"""The `host` path: the bench workload through `cosyfast-load` (tools/cosyfast_load.cc), a C++
host of the C API, in a child process.

The child loads a bundle exported from the same weights (once, cached under `$COSYFAST_CACHE`) on
the engine the bench uses, runs one point's requests (the in-process path's: same prompts, seeds
and token counts) from as many threads as requests, and reports its own wall clock (first start
to last end; its model load and warm-up are not timed) and each token's arrival time."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .._paths import cache_root
from ..bundle import BUNDLE_FORMAT_VERSION, CONFIG_NAME, export_cpu_bundle, load_program
from ..checkpoint import LlmWeights
from .metrics import RunResult, summarize
from .workload import Request, Workload


def cached_bundle(weights: LlmWeights) -> Path:
    """The CPU bundle of `weights`, exported on first use (keyed by the checkpoint's hash)."""
    out = cache_root() / "bundles" / f"{weights.kind}-{weights.source_hash[:16]}-v{BUNDLE_FORMAT_VERSION}"
    if not (out / CONFIG_NAME).is_file():
        try:
            export_cpu_bundle(weights, out)
        except OSError:
            if not (out / CONFIG_NAME).is_file():  # not another bench exporting it at the same time
                raise
    return out


def model_flags(engine: str, max_batch: int, replicas: int, devices: list[int] | None = None,
                gpu_memory: float | None = None) -> list[str]:
    """cosyfast-load's model flags for the bench model's options (`replicas`: the count it runs).
    The C API puts replica i on GPU device + i, so `devices` must be consecutive, one per replica."""
    flags = ["--engine", engine, "--max-batch", str(max_batch), "--replicas", str(replicas)]
    if devices:
        if devices != list(range(devices[0], devices[0] + replicas)):
            raise ValueError(f"the host path runs replica i on GPU {devices[0]} + i: give --devices as {replicas} "
                             f"consecutive ids (one per replica), not {devices}")
        flags += ["--device", str(devices[0])]
    if gpu_memory is not None:
        flags += ["--gpu-memory", str(gpu_memory)]
    return flags


def requests_text(work: Workload, requests: list[Request]) -> str:
    """The requests in cosyfast-load's file format: one a line, NAME=VALUE fields."""
    def ids(v: list[int]) -> str:
        return ",".join(map(str, v))

    lengths = " ".join(f"{k}={v}" for k, v in work.length_options().items())
    return "".join(f"text_ids={ids(r.text_ids)} prompt_text_ids={ids(r.prompt_text_ids)} "
                   f"prompt_speech_tokens={ids(r.prompt_speech_tokens)} seed={r.seed} {lengths}\n" for r in requests)


def run_host(bundle: Path, flags: list[str], work: Workload,
             requests: list[Request]) -> tuple[float, list[list[float]], dict[str, Any]]:
    """One run: (the harness's wall seconds, per request the seconds from its start to each token,
    the harness's report)."""
    with tempfile.TemporaryDirectory(prefix="cosyfast-host-") as tmp:
        requests_file, times_file = Path(tmp) / "requests.txt", Path(tmp) / "times.txt"
        requests_file.write_text(requests_text(work, requests))
        n = str(len(requests))
        out = subprocess.run([str(load_program()), str(bundle), "--requests", str(requests_file), "--threads", n,
                              "--warmup", str(min(8, len(requests))), "--times-out", str(times_file), *flags],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"cosyfast-load failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
        arrivals = [[float(t) for t in line.split()] for line in times_file.read_text().splitlines()]
    report = json.loads(out.stdout)
    return report["wall_s"], arrivals, report


def host_results(weights: LlmWeights, work: Workload, sweep: list[int], flags: list[str],
                 median_run: Callable[[Callable[[], tuple]], tuple]) -> Iterator[RunResult]:
    """The host rows over the sweep, each as soon as it is measured: one child process per run."""
    bundle = cached_bundle(weights)
    for c in sweep:
        reqs = work.requests(c, weights.kind)
        wall, arrivals, report = median_run(lambda: run_host(bundle, flags, work, reqs))
        res = summarize("host", c, wall, arrivals, None, finished=report["finished"],
                        live_sessions_after=report["live_sessions_after"])
        res.host_rss_mb = report["peak_rss_mb"]  # the child's, where the engine ran
        yield res
