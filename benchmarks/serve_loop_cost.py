"""The serve event loop's CPU time per request under bursts: what bounds how fast a burst of
requests is admitted (the loop admits them one after another), so what a stream's first token
waits for behind the others.

`cosyfast serve`'s app (BackgroundServer) with the bench's client in a child process: ROUNDS bursts
of STREAMS streamed requests (a 150-row prompt, NEW_TOKENS tokens each); per burst, the loop
thread's CPU seconds (time.thread_time on the loop) over the requests, and how far apart the
requests reached the handler (the burst's spread of `received` over its requests). Prints the
medians and every burst's figure. Default: a tiny synthetic model on the cpu engine, 2 tokens per
request (the admission cost alone); `--engine turbomind --size full --new-tokens 500` is the
bench's serve workload on the GPU, with its tokens flowing while the burst is admitted.
`--http granian`: the same app under granian (a Rust HTTP server: parsing and socket writes off
the event loop's thread; embedded, a measurement only: `cosyfast serve` runs uvicorn, whose
hostile-client limits the tests cover). The loop CPU is then the thread that runs the app.
`--profile 30`: cProfile on the loop thread over the timed bursts, the top 30 functions by own time
(the profiler slows the loop: read its shares, not its times).

    python benchmarks/serve_loop_cost.py [--streams 64] [--rounds 12] [--engine cpu|turbomind]
                                         [--size tiny|full] [--new-tokens 2] [--flush-ms MS]
                                         [--http uvicorn|granian] [--profile 0]
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import statistics
import subprocess
import sys
import threading
import time


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--engine", default="cpu", choices=["cpu", "turbomind"])
    p.add_argument("--size", default="tiny", choices=["tiny", "full"])
    p.add_argument("--new-tokens", type=int, default=2)
    p.add_argument("--flush-ms", type=float, default=None, help="the service's flush interval (default: its default)")
    p.add_argument("--profile", type=int, default=0, help="print the loop's top N functions by own time")
    p.add_argument("--http", default="uvicorn", choices=["uvicorn", "granian"])
    p.add_argument("--log-level", default="warning", help="uvicorn's (info: its access log on, as `cosyfast serve`)")
    args = p.parse_args(argv)

    import cosyfast
    import cosyfast.bench.serve_client as client
    from cosyfast.bench.runs import arrivals_recorded
    from cosyfast.bench.serve_path import _loop_cpu, on_service_loop
    from cosyfast.bench.workload import Workload
    from cosyfast.serve import BackgroundServer, Service
    from cosyfast.synthetic import ensure_default_model

    work = Workload(prompt_rows=150, new_tokens=args.new_tokens)
    bodies = [dataclasses.asdict(r) | work.length_options() for r in work.requests(args.streams, "cosyvoice2")]
    per_request_us, spacing_us = [], []
    profiler = cProfile.Profile() if args.profile else None
    with cosyfast.load(ensure_default_model(kind="cosyvoice2", size=args.size), engine=args.engine,
                       max_batch=max(8, args.streams)) as model:
        flush = {} if args.flush_ms is None else {"flush_interval_s": args.flush_ms / 1000}
        service = Service(model, max_sessions=max(256, args.streams), **flush)
        server = BackgroundServer(service, log_level=args.log_level) if args.http == "uvicorn" else Granian(service)
        with arrivals_recorded(), server as url:
            for r in range(args.rounds + 1):  # the first burst warms up (connections, the engine's first use)
                child = subprocess.Popen([sys.executable, client.__file__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(json.dumps({"url": url, "bodies": bodies}) + "\n")
                child.stdin.flush()
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("the client did not start")
                time.sleep(0.2)
                before = _loop_cpu(service)
                service.timelines = []
                if profiler and r:  # cProfile profiles the thread that enables it
                    on_service_loop(service, profiler.enable)
                child.stdin.write("go\n")
                child.stdin.flush()
                child.communicate()
                time.sleep(0.2)  # the burst's last sessions end on the loop
                if profiler and r:
                    on_service_loop(service, profiler.disable)
                after = _loop_cpu(service)
                received = sorted(t["received"] for t in service.timelines if t["received"] is not None)
                assert before is not None and after is not None
                if len(received) < args.streams:
                    raise RuntimeError(f"{len(received)} of {args.streams} requests of a burst ended on the server")
                if r:
                    per_request_us.append((after - before) / args.streams * 1e6)
                    spacing_us.append((received[-1] - received[0]) / max(1, len(received) - 1) * 1e6)
    print(f"loop CPU per request: median {statistics.median(per_request_us):.0f} us over {args.rounds} bursts of "
          f"{args.streams}; every burst: {[round(x) for x in per_request_us]}")
    print(f"requests reached the handler {statistics.median(spacing_us):.0f} us apart on average (the median of the "
          f"bursts' means; every burst: {[round(x) for x in spacing_us]})")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


class Granian:
    """The service's app under granian's embedded server, on a thread and event loop of its own."""

    def __init__(self, service) -> None:  # type: ignore[no-untyped-def]
        import asyncio
        import socket

        from granian.constants import Interfaces
        from granian.server.embed import Server

        from cosyfast.serve.app import create_app

        with socket.socket() as s:  # a free port (granian's embedded server does not say which it bound)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = Server(create_app(service), address="127.0.0.1", port=self.port, interface=Interfaces.ASGI,
                             log_enabled=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self.server.serve()), daemon=True)

    def __enter__(self) -> str:
        import socket

        self.thread.start()
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return f"http://127.0.0.1:{self.port}"
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"granian did not open port {self.port} within 10 s")

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(10)



if __name__ == "__main__":
    main()
