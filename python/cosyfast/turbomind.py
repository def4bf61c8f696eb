"""Sets up the TurboMind engine (lmdeploy 0.14.x) for the C++ core; the step loop itself runs in C++."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


@contextmanager
def _engine_config_fields(tm_module: Any, **fields: int) -> Iterator[None]:
    """Sets EngineConfig fields that lmdeploy 0.14's Python side never sets, on the config that
    `TurboMind.from_pretrained` hands to C++ (the binding exposes every field; the Python
    TurbomindEngineConfig does not). Restores the binding's factory on exit."""
    cls = tm_module.TurboMind
    original = cls.__dict__["create"]
    create = cls.create

    def create_with_fields(model_dir: str, engine_config: Any) -> Any:
        for name, value in fields.items():
            setattr(engine_config, name, value)
        return create(model_dir=model_dir, engine_config=engine_config)

    cls.create = staticmethod(create_with_fields)
    try:
        yield
    finally:
        cls.create = original


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
    max_context_token_num: int | None = None,
) -> tuple[_core.TurboMindEngine, Any]:
    """Exports the checkpoint (cached), starts TurboMind on it and wraps it for the C++ core.

    async_=0 by default: with one request per token, TurboMind's asynchronous mode (its default)
    adds an engine iteration to every request's latency (H100: 3.5 -> 2.1 ms/token at batch 1).
    max_context_token_num: TurboMind admits a sequence that is not running into an iteration only
    while the contexts of those admitted sum to at most this many tokens (it budgets a KV flatten
    buffer for each, though a one-token step never uses one). Every step of ours re-admits its
    session, so the engine's default (session_len) split a round of 64 sessions into ~9
    iterations. Default: max_batch * max_session_len, i.e. no split; real prefills stay bounded by
    max_prefill_token_num.
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
    if max_context_token_num is None:
        max_context_token_num = min(max_batch * max_session_len, 2**31 - 1)
    if max_context_token_num < max_session_len:
        raise ValueError(f"max_context_token_num must be >= max_session_len ({max_session_len}), "
                         f"got {max_context_token_num}")
    with _engine_config_fields(_tm, max_context_token_num=max_context_token_num):
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
