"""Sets up the TurboMind engine (lmdeploy 0.14.x) for the C++ core; the step loop itself runs in C++."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _core
from .checkpoint import LlmWeights
from .export import export_turbomind

SUPPORTED = "0.14"


def check_lmdeploy() -> Any:
    """Imports lmdeploy and checks it is 0.14.x: the last release whose TurboMind keeps a
    session's KV cache between requests, which a per-token custom sampler needs (0.15+ is
    stateless)."""
    try:
        import lmdeploy
    except ImportError as e:
        raise ImportError(
            "the turbomind engine needs lmdeploy 0.14.x (pip install 'cosyfast[turbomind]'); " f"import failed: {e}"
        ) from e
    version = getattr(lmdeploy, "__version__", "unknown")
    if not version.startswith(SUPPORTED + "."):
        raise ImportError(
            f"the turbomind engine needs lmdeploy {SUPPORTED}.x, found {version}: later releases dropped "
            "interactive sessions (a kept KV cache between requests), which exact RAS sampling needs"
        )
    return lmdeploy


def make_turbomind_engine(
    weights: LlmWeights,
    *,
    max_batch: int = 256,
    max_session_len: int = 4096,
    cache_max_entry_count: float = 0.5,
    export_cache: Path | None = None,
    device: int = 0,
    async_: int = 0,
    enable_metrics: bool = False,
) -> tuple[_core.TurboMindEngine, Any]:
    """Exports the checkpoint (cached), starts TurboMind on it and wraps it for the C++ core.

    async_=0 by default: with one request per token, TurboMind's asynchronous mode (its default)
    adds an engine iteration to every request's latency (H100: 3.5 -> 2.1 ms/token at batch 1).
    Returns the core engine and lmdeploy's TurboMind object (for lmdeploy's own loop in benchmarks)."""
    check_lmdeploy()
    from lmdeploy import TurbomindEngineConfig
    from lmdeploy.turbomind import TurboMind
    from lmdeploy.turbomind.turbomind import _tm

    model_dir = export_turbomind(weights, export_cache, session_len=max_session_len)
    config = TurbomindEngineConfig(
        dtype="bfloat16",
        max_batch_size=max_batch,
        cache_max_entry_count=cache_max_entry_count,
        session_len=max_session_len,
        devices=[device],
        async_=async_,
        enable_metrics=enable_metrics,
    )
    tm = TurboMind.from_pretrained(str(model_dir), engine_config=config)
    gen = _tm.GenerationConfig()
    gen.max_new_tokens = 1
    gen.top_k = 1
    gen.output_logits = 2  # "generation": logits of the next token
    engine = _core.TurboMindEngine(
        tm_module=_tm,
        model_comm=tm.model_comm,
        gen_config=gen,
        owner=tm,
        hidden_size=int(weights.config["hidden_size"]),
        vocab_size=weights.padded_vocab(),
        max_session_len=max_session_len,
    )
    return engine, tm
