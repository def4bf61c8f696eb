"""The `serve` path: the bench workload through `cosyfast serve`'s HTTP API on loopback.

The server runs in the bench process over the same Model as the in-process path (so both use
one engine); the clients run in a child process (serve_client.py, run by path: no torch to import),
as real clients would, and time each token when its NDJSON line arrives."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .metrics import RunResult, summarize
from .workload import Request, Workload

if TYPE_CHECKING:
    from ..model import Model


def run_serve(url: str, work: Workload, requests: list[Request]) -> tuple[float, list[list[float]]]:
    bodies = [asdict(r) | work.length_options() for r in requests]
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("serve_client.py")), url], input=json.dumps(bodies),
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the serve clients failed: {out.stderr.strip()[-2000:]}")
    wall, arrivals = json.loads(out.stdout)
    return wall, arrivals


def serve_results(model: "Model", work: Workload, kind: str, sweep: list[int],
                  median_run: Callable[[Callable[[], tuple]], tuple]) -> list[RunResult]:
    """The serve rows over the sweep (one server for all of them, an untimed warm-up first)."""
    from ..serve import BackgroundServer, Service

    results = []
    with BackgroundServer(Service(model, max_sessions=max(sweep))) as url:
        warm = Workload(prompt_rows=work.prompt_rows, new_tokens=8)
        run_serve(url, warm, warm.requests(min(8, max(sweep)), kind))
        for c in sweep:
            reqs = work.requests(c, kind)
            wall, arrivals = median_run(lambda: run_serve(url, work, reqs))
            results.append(summarize("serve", c, wall, arrivals, None))
    return results

