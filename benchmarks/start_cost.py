"""What one request's start costs the calling thread (issue 19: a serve burst is admitted one
request after another on the event loop, so a start's cost is the spacing of a burst's first tokens).

Times Model.stream (wall and the calling thread's CPU: a wall far above the CPU means the start
waits on something, not computes) for STREAMS requests of the bench's workload (150-row prompt),
started one after another, in three states: the engine idle, the engine decoding STREAMS other
sessions, and again idle; and the Python that runs before the core (request_options and the id
checks); on TurboMind, the core's own split of a start (_core._turbomind_start_timing: the
caller's checks; then, on the generator's starter thread, the wait in its queue, the prompt's
assembly and the submission to TurboMind) over one more round with the engine idle. Medians over
ROUNDS rounds; every started session is cancelled and drained untimed.

    python benchmarks/start_cost.py [--engine turbomind|cpu] [--size full|tiny] [--streams 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="turbomind", choices=["turbomind", "cpu"])
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import dataclasses

    import cosyfast
    from cosyfast import _core
    from cosyfast.bench.workload import Workload
    from cosyfast.model import _ids, request_options
    from cosyfast.synthetic import ensure_default_model

    work = Workload(prompt_rows=150, new_tokens=500)
    requests = [dataclasses.asdict(r) for r in work.requests(args.streams, "cosyvoice2")]
    with cosyfast.load(ensure_default_model(kind="cosyvoice2", size=args.size), engine=args.engine,
                       max_batch=max(8, 2 * args.streams)) as model:

        def start(r: dict) -> object:
            return model.stream(r["text_ids"], r["prompt_text_ids"], r["prompt_speech_tokens"], seed=r["seed"],
                                **work.length_options())

        def starts() -> tuple[list, float, float]:
            """Starts every request; (streams, wall us per start, thread CPU us per start)."""
            streams, wall, cpu = [], 0.0, 0.0
            for r in requests:
                w0, c0 = time.perf_counter(), time.thread_time()
                streams.append(start(r))
                wall += time.perf_counter() - w0
                cpu += time.thread_time() - c0
            return streams, wall / len(requests) * 1e6, cpu / len(requests) * 1e6

        def end(streams: list) -> None:
            for s in streams:
                s.cancel()
            for s in streams:
                s.drain()

        end(starts()[0])  # warm-up
        rows: dict[str, list[tuple[float, float]]] = {"idle": [], "busy": [], "idle again": []}
        for _ in range(args.rounds):
            streams, wall, cpu = starts()
            rows["idle"].append((wall, cpu))
            end(streams)
            others = [start(r) for r in requests]
            time.sleep(0.1)  # past their prefill: decoding
            streams, wall, cpu = starts()
            rows["busy"].append((wall, cpu))
            end(streams + others)
            streams, wall, cpu = starts()
            rows["idle again"].append((wall, cpu))
            end(streams)
        if args.engine == "turbomind":  # the core's own split of a start, over one more round (engine idle)
            before = _core._turbomind_start_timing()
            streams, _, _ = starts()
            deadline = time.time() + 30  # every start submitted by the starter thread before the cancels
            while _core._turbomind_start_timing()["starts"] - before["starts"] < len(streams) and time.time() < deadline:
                time.sleep(0.001)
            end(streams)
            after = _core._turbomind_start_timing()
            n = after["starts"] - before["starts"]
            split = {k.removesuffix("_ns"): round((after[k] - before[k]) / max(1, n) / 1000, 1)
                     for k in ("check_ns", "wait_ns", "assemble_ns", "submit_ns")}
            print(f"the core's start, one more round with the engine idle, us per start over {n}: {split}")
        for state, values in rows.items():
            print(f"Model.stream, engine {state}: wall {statistics.median(v[0] for v in values):.0f} us, "
                  f"thread CPU {statistics.median(v[1] for v in values):.0f} us per start "
                  f"(median of {args.rounds} rounds of {args.streams}; every round's wall: {[round(v[0]) for v in values]})")

        r = requests[0]
        t0 = time.perf_counter()
        for _ in range(200):
            request_options(seed=r["seed"], **work.length_options())
            for f in ("text_ids", "prompt_text_ids", "prompt_speech_tokens"):
                _ids(r[f], f)
        print(f"Python before the core (request_options, id checks): {(time.perf_counter() - t0) / 200 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
