"""The `serve` path: the bench workload through `cosyfast serve`'s HTTP API on loopback.

The server runs in the bench process over the same Model as the in-process path (so both use
one engine); the clients run in child processes (serve_client.py, run by path: no torch to
import; HTTP/1.1 parsed by httptools, so that the client's own work per response does not show as
server latency), the requests spread over them so that the clients are not the bottleneck, as real
clients on other machines would not be. Every process opens and warms its connections first;
then all start together. Each token is timed when its NDJSON line arrives, from its request's own
send (first-token latency as a client sees it); the wall time runs from the first send to the
last token, and each run records the CPU time the client processes and the server process used:
client_cpu_s (all clients), client_busiest_cpu_share (the busiest client's CPU time over the wall
time: near 1 means a client was the bottleneck), server_cpu_s (the bench process: the server's
event loop and the engine's threads) over server_cpu_window_s, and server_loop_cpu_s (the event
loop's thread alone). Where the first token's time goes, from the moment the clients were told to
go, p50 and p90 over the run's requests in ms (first_token_timeline_ms): the client sends it
(client_sent), the request reaches the handler (received), the engine is handed it (admitted; on
TurboMind: queued for the generator's starter thread) and has its first token (engine_first), the
event loop hands that to the response (first_delivered), the client reads it (client_first). The
row's first_token_ms counts from each request's own send.
Measured on the 2-core CPU box, tiny model, 64 streams from one client process: the first token
p50 was 75 ms with an httpx client (36 ms of it between first_delivered and client_first) and 24 ms
with this one."""
from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np

from .metrics import RunResult, summarize
from .runs import arrivals_recorded
from .workload import Request, Workload

if TYPE_CHECKING:
    from ..model import Model
    from ..serve import Service

CLIENT = Path(__file__).with_name("serve_client.py")
T = TypeVar("T")


def _cpu() -> float:
    """This process's CPU seconds, every thread (the server's event loop and the engine's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def default_client_procs(concurrency: int) -> int:
    """Enough processes that each handles few enough streams, and no more than half the cores."""
    return max(1, min(concurrency, 8, (os.cpu_count() or 2) // 2))


def on_service_loop(service: "Service", fn: Callable[[], T]) -> T | None:
    """`fn()` run on the service's event-loop thread, its result once it has run (None before the
    service's first request, when it has no loop yet)."""
    d = service._dispatcher
    if d is None or d.loop.is_closed():
        return None
    box: concurrent.futures.Future[T] = concurrent.futures.Future()
    d.loop.call_soon_threadsafe(lambda: box.set_result(fn()))
    return box.result(timeout=30)


def _loop_cpu(service: "Service") -> float | None:
    """CPU seconds of the service's event-loop thread so far (None before its first request)."""
    return on_service_loop(service, time.thread_time)


def first_token_timeline(timelines: list[dict[str, float | None]], clients: list[dict[str, Any]],
                         go: float) -> dict[str, list[float]]:
    """Per stage, [p50, p90] ms after `go`: the clients' sends, the server's stages (its
    Service.timelines) and the clients' first token."""
    sent = [s for c in clients for s in c["sends"]]
    first = [s + a[0] for c in clients for s, a in zip(c["sends"], c["arrivals"]) if a]
    stages: dict[str, list[float]] = {"client_sent": sent}
    for stage in ("received", "admitted", "engine_first", "first_delivered"):
        stages[stage] = [t[stage] for t in timelines if t[stage] is not None]  # type: ignore[misc]
    stages["client_first"] = first
    return {stage: [round(float(np.percentile(values, q) - go) * 1000, 2) for q in (50, 90)]
            for stage, values in stages.items() if values}


def run_serve(url: str, work: Workload, requests: list[Request], procs: int,
              service: "Service | None" = None) -> tuple[float, list[list[float]], dict]:
    """(wall seconds, per request the seconds from its send to each token, CPU figures and, with
    the service, its event loop's CPU and the first token's timeline)."""
    bodies = [asdict(r) | work.length_options() for r in requests]
    procs = max(1, min(procs, len(bodies)))
    shares = [bodies[i::procs] for i in range(procs)]
    children = [subprocess.Popen([sys.executable, str(CLIENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in shares]
    try:
        for child, share in zip(children, shares):
            assert child.stdin is not None
            child.stdin.write(json.dumps({"url": url, "bodies": share}) + "\n")
            child.stdin.flush()
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a serve client failed to start: {child.communicate()[1].strip()[-2000:]}")
        if service is not None:
            service.timelines, loop0 = [], _loop_cpu(service)
        with arrivals_recorded():  # the engine's first-token times, as the in-process path records them
            cpu0, t0 = _cpu(), time.perf_counter()
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            outs = [child.communicate() for child in children]
            cpu1, t1 = _cpu(), time.perf_counter()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    results: list[dict[str, Any]] = []
    for child, (out, err) in zip(children, outs):
        if child.returncode != 0:
            raise RuntimeError(f"a serve client failed: {err.strip()[-2000:]}")
        results.append(json.loads(out))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    arrivals = [a for r in results for a in r["arrivals"]]
    client_cpu = sum(r["cpu_s"] for r in results)
    server_cpu = cpu1 - cpu0
    cpu = {"client_procs": procs, "client_cpu_s": round(client_cpu, 3),
           "client_busiest_cpu_share": round(max(r["cpu_s"] for r in results) / max(wall, 1e-9), 3),
           "server_cpu_s": round(server_cpu, 3), "server_cpu_window_s": round(t1 - t0, 3)}
    if service is not None:
        loop1 = _loop_cpu(service)
        if loop0 is not None and loop1 is not None:
            cpu["server_loop_cpu_s"] = round(loop1 - loop0, 3)
        cpu["first_token_timeline_ms"] = first_token_timeline(service.timelines or [], results,
                                                              min(r["start"] for r in results))
        service.timelines = None
    return wall, arrivals, cpu


def serve_results(model: "Model", work: Workload, kind: str, sweep: list[int],
                  median_run: Callable[[Callable[[], tuple]], tuple], client_procs: int | None = None,
                  flush_ms: float | None = None) -> Iterator[RunResult]:
    """The serve rows over the sweep, each as soon as it is measured (one server for all of them,
    an untimed warm-up first).
    client_procs: client processes per run (default: default_client_procs of the concurrency);
    flush_ms: the service's flush interval (default its own; rows then labelled serve, else
    serve-flush<ms>ms)."""
    from ..serve import BackgroundServer, Service
    from ..serve.service import DEFAULT_FLUSH_INTERVAL_S

    flush_s = DEFAULT_FLUSH_INTERVAL_S if flush_ms is None else flush_ms / 1e3
    label = "serve" if flush_ms is None else f"serve-flush{flush_ms:g}ms"
    service = Service(model, max_sessions=max(sweep), flush_interval_s=flush_s)
    with BackgroundServer(service) as url:
        warm = Workload(prompt_rows=work.prompt_rows, new_tokens=8)
        run_serve(url, warm, warm.requests(min(8, max(sweep)), kind), 1)
        for c in sweep:
            reqs = work.requests(c, kind)
            procs = client_procs or default_client_procs(c)
            wall, arrivals, cpu = median_run(lambda: run_serve(url, work, reqs, procs, service))
            yield summarize(label, c, wall, arrivals, None, **cpu)
