"""Where does a round of many sessions go? A diagnostic probe for benchmarks/NOTES.md.

Runs `--sessions` cosyfast sessions on one TurboMind instance (full-size synthetic CV2, 150-row
prompt) and, while they decode, samples: GPU utilisation (nvidia-smi), the CPU time of every
thread of this process (/proc), and native stacks of every thread (cuda-gdb snapshots). Then the
same number of sessions through lmdeploy's own loop, for the GPU utilisation of the ceiling.

    python benchmarks/probe_round.py --out DIR [--sessions 64] [--tokens 1500] [--stacks 0]
        [--replicas 1] [--lanes 1] [--trace]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from pathlib import Path


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


class GpuSampler:
    """nvidia-smi utilisation every 100 ms while running."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.values: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.values.append(int(line.strip()))

    def window(self):
        n0 = len(self.values)
        return lambda: self.values[n0:]

    def close(self) -> None:
        self.proc.terminate()


def stacks(path: Path, timeout: int = 150) -> None:
    cmd = ["cuda-gdb", "-p", str(os.getpid()), "-batch", "-ex", "set pagination off",
           "-ex", "thread apply all bt 24"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        path.write_text(res.stdout[-600_000:] + "\n--- stderr\n" + res.stderr[-4000:])
    except Exception as e:  # noqa: BLE001 - a probe reports, it does not fail
        path.write_text(f"cuda-gdb failed: {e}")


def trace(path: Path, seconds: float) -> str:
    """CUDA activity (kernels, copies, API calls of every library in the process) for a window."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        time.sleep(seconds)
    prof.export_chrome_trace(str(path))
    subprocess.run(["gzip", "-f", str(path)], check=False)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1500)
    p.add_argument("--stacks", type=int, default=0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--trace", action="store_true", help="also record CUDA activity (torch.profiler)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import cosyfast
    from cosyfast.bench.paths import run_cosyfast, run_turbomind_native
    from cosyfast.bench.workload import Workload
    from cosyfast.checkpoint import load_checkpoint
    from cosyfast.synthetic import ensure_default_model

    weights = load_checkpoint(ensure_default_model(kind="cosyvoice2", size="full"))
    model = cosyfast.load(weights, engine="turbomind", replicas=args.replicas, lanes=args.lanes, max_batch=256)
    warm = Workload(new_tokens=8)
    run_cosyfast(model, warm, warm.requests(8, weights.kind))
    gpu = GpuSampler()
    report: list[str] = []

    work = Workload(new_tokens=args.tokens)
    reqs = work.requests(args.sessions, weights.kind)
    done = threading.Event()
    result: dict = {}

    def decode() -> None:
        before = model.stats
        result["wall"], result["arr"] = run_cosyfast(model, work, reqs)
        result["before"], result["after"] = before, model.stats
        done.set()

    t = threading.Thread(target=decode)
    t.start()
    time.sleep(3.0)  # past the prefills
    cpu0, t0, util = thread_cpu(), time.perf_counter(), gpu.window()
    time.sleep(4.0)
    cpu1, t1, busy = thread_cpu(), time.perf_counter(), util()
    report.append(f"cosyfast {args.sessions} sessions, {args.replicas} instance(s) x {args.lanes} lane(s): GPU util over 4 s "
                  f"mean {sum(busy) / max(len(busy), 1):.0f}% ({len(busy)} samples)")
    report.append("threads by CPU share over the window (tid: percent of one core):")
    for tid, c in sorted(((tid, (cpu1[tid] - cpu0.get(tid, 0.0)) / (t1 - t0) * 100) for tid in cpu1),
                         key=lambda x: -x[1])[:12]:
        report.append(f"  {tid}: {c:.0f}%")
    if args.trace:
        report.append(trace(out / "trace_cosyfast.json", 0.15))
        print(report[-1], flush=True)
    for i in range(args.stacks):
        if done.is_set():
            break
        stacks(out / f"stacks_{i}.txt")
        time.sleep(1.0)
    t.join()
    a, b = result["after"], result["before"]
    rounds = a["rounds"] - b["rounds"]
    prof = [{k: pa[k] - pb[k] for k in pa} for pa, pb in zip(a["engine_profiles"], b["engine_profiles"])]
    tokens = sum(len(x) for x in result["arr"])
    report.append(f"cosyfast: {tokens / result['wall']:.0f} tok/s over the whole run (stack snapshots stall it); "
                  f"rounds {rounds}; engine profiles {prof}")

    util = gpu.window()
    nat = Workload(new_tokens=400)
    nreq = nat.requests(args.sessions, weights.kind)
    tw = time.perf_counter()
    nat_result: dict = {}
    nt = threading.Thread(target=lambda: nat_result.update(
        r=run_turbomind_native(model.backend, weights, nat, nreq, 1 << 42)))
    nt.start()
    time.sleep(0.6)
    if args.trace:
        report.append(trace(out / "trace_native.json", 0.1))
        print(report[-1], flush=True)
    nt.join()
    wall, arr = nat_result["r"]
    busy = util()
    report.append(f"native {args.sessions} sessions: {sum(len(x) for x in arr) / wall:.0f} tok/s, "
                  f"GPU util mean {sum(busy) / max(len(busy), 1):.0f}% over {time.perf_counter() - tw:.1f} s")
    gpu.close()
    text = "\n".join(report)
    print(text, flush=True)
    (out / "probe_round.txt").write_text(text + "\n")
    model.close()
    os._exit(0)  # TurboMind's threads may hold the interpreter at exit


if __name__ == "__main__":
    main()
