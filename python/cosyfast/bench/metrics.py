"""What users read: tokens/s, ms per token, first-token latency, LLM real-time factor."""
from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .workload import TOKENS_PER_AUDIO_SECOND


@dataclass
class RunResult:
    path: str
    concurrency: int
    tokens: int
    wall_s: float
    tok_per_s: float
    ms_per_token_p50: float
    ms_per_token_p90: float
    ms_per_token_p99: float
    first_token_ms_p50: float
    first_token_ms_p90: float
    rtf: float
    peak_gpu_mem_mb: float | None
    host_rss_mb: float
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        return asdict(self)


def summarize(path: str, concurrency: int, wall_s: float, arrivals: list[list[float]],
              peak_gpu_mem_mb: float | None, **extra: object) -> RunResult:
    """`arrivals[i]`: seconds from request i's start to each of its tokens."""
    tokens = sum(len(a) for a in arrivals)
    gaps = np.concatenate([np.diff(a) for a in arrivals if len(a) > 1]) * 1000 if tokens else np.zeros(1)
    first = np.asarray([a[0] for a in arrivals if a]) * 1000
    audio_s = tokens / TOKENS_PER_AUDIO_SECOND
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return RunResult(
        path=path, concurrency=concurrency, tokens=tokens, wall_s=round(wall_s, 4),
        tok_per_s=round(tokens / wall_s, 1),
        ms_per_token_p50=round(float(np.percentile(gaps, 50)), 3),
        ms_per_token_p90=round(float(np.percentile(gaps, 90)), 3),
        ms_per_token_p99=round(float(np.percentile(gaps, 99)), 3),
        first_token_ms_p50=round(float(np.percentile(first, 50)), 2),
        first_token_ms_p90=round(float(np.percentile(first, 90)), 2),
        rtf=round(wall_s / audio_s, 5) if audio_s else float("nan"),
        peak_gpu_mem_mb=peak_gpu_mem_mb, host_rss_mb=round(rss_mb, 1), extra=dict(extra),
    )


def overhead(row: dict[str, Any], inprocess_row: dict[str, Any]) -> dict[str, float]:
    """What a path adds per token over the in-process row of the same call and workload (HTTP for
    `serve`, a separate C++ host process for `host`): wall time per token (1 / throughput) and the
    p50 gap."""
    per_token = row["wall_s"] / row["tokens"] - inprocess_row["wall_s"] / inprocess_row["tokens"]
    return {"overhead_us_per_token": round(per_token * 1e6, 2),
            "overhead_ms_per_token_p50": round(row["ms_per_token_p50"] - inprocess_row["ms_per_token_p50"], 3)}


def gpu_memory_used_mb() -> float | None:
    """Device memory in use (all allocators, TurboMind's included), or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return round(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20, 1)
    except Exception:  # noqa: BLE001 - no NVML means no figure, not a failure
        return None


MARKDOWN_COLUMNS = ["path", "concurrency", "tokens", "tok_per_s", "ms_per_token_p50", "ms_per_token_p90",
                    "ms_per_token_p99", "first_token_ms_p50", "first_token_ms_p90", "rtf", "peak_gpu_mem_mb",
                    "host_rss_mb"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c)) for c in MARKDOWN_COLUMNS) + " |")
    return "\n".join(lines)
