"""The serve event loop's CPU time per request under bursts: what bounds how fast a burst of
requests is admitted (the loop admits them one after another), so what a stream's first token
waits for behind the others.

A tiny synthetic model on the cpu engine behind `cosyfast serve`'s app (BackgroundServer, the
bench's client in a child process): ROUNDS bursts of STREAMS streamed requests (a 150-row prompt,
2 tokens each); per burst, the loop thread's CPU seconds (time.thread_time on the loop) over the
requests. Prints the median and every burst's figure.

    python benchmarks/serve_loop_cost.py [--streams 64] [--rounds 12] [--log-level warning]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--log-level", default="warning", help="uvicorn's (info: its access log on, as `cosyfast serve`)")
    args = p.parse_args(argv)

    import numpy as np

    import cosyfast
    import cosyfast.bench.serve_client as client
    from cosyfast.bench.serve_path import _loop_cpu
    from cosyfast.serve import BackgroundServer, Service
    from cosyfast.synthetic import write_model_dir

    model_dir = write_model_dir(Path(tempfile.mkdtemp()) / "m", kind="cosyvoice2", size="tiny", seed=0)
    rng = np.random.default_rng(0)
    bodies = [{"text_ids": rng.integers(0, 1000, 30).tolist(), "prompt_text_ids": rng.integers(0, 1000, 16).tolist(),
               "prompt_speech_tokens": rng.integers(0, 6561, 100).tolist(), "max_len": 2, "min_len": 2, "seed": i}
              for i in range(args.streams)]
    per_request_us = []
    with cosyfast.load(model_dir, engine="cpu") as model:
        service = Service(model, max_sessions=max(256, args.streams))
        with BackgroundServer(service, log_level=args.log_level) as url:
            for _ in range(args.rounds):
                child = subprocess.Popen([sys.executable, client.__file__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(json.dumps({"url": url, "bodies": bodies}) + "\n")
                child.stdin.flush()
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("the client did not start")
                time.sleep(0.2)
                before = _loop_cpu(service)
                child.stdin.write("go\n")
                child.stdin.flush()
                child.communicate()
                time.sleep(0.2)  # the burst's last sessions end on the loop
                after = _loop_cpu(service)
                assert before is not None and after is not None
                per_request_us.append((after - before) / args.streams * 1e6)
    print(f"loop CPU per request: median {statistics.median(per_request_us):.0f} us over {args.rounds} bursts of "
          f"{args.streams}; every burst: {[round(x) for x in per_request_us]}")


if __name__ == "__main__":
    main()
