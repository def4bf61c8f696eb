"""The Python front of cosyfast: load a CosyVoice LLM checkpoint onto an engine and generate.

Python reads and merges weights and sets sessions up; the per-token loop (embedding lookup,
RAS sampling, stepping every live session) runs in the C++ core with the GIL released.
"""
from __future__ import annotations

import atexit
import numbers
import os
import secrets
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _core
from .checkpoint import LlmWeights, load_checkpoint

ENGINES = ("auto", "cpu", "turbomind")
# TurboMind runs every session in its own loop (RAS and the bias included): one engine per GPU
# keeps the GPU busy; lanes and sample threads belong to the cpu engine's round scheduler.
DEFAULT_TURBOMIND_REPLICAS_PER_GPU = 1


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SEED_MAX = 2**64 - 1
# The core's defaults (max_batch, max_session_len, lanes, sample_threads) and those of one request.
DEFAULTS: dict[str, int] = dict(_core.DEFAULTS)
_SAMPLING = _core.SamplingOptions()
_LENGTH = _core.LengthOptions()
# One process, one set of models: the exit handler closes them, a fork makes them unusable.
_LIVE_MODELS: "weakref.WeakSet[Model]" = weakref.WeakSet()
_FORKED = ("this model was loaded before fork(): its scheduler threads exist only in the parent "
           "process; load the model again in the child (or start children with the 'spawn' method)")


def _ids(values: Any, name: str) -> list[int]:
    """Token ids from a list, tuple, numpy array or torch tensor (any shape), as a flat list.

    Only the 32-bit range is checked here (the core takes int32); the core checks each id
    against its table and names the table's size.
    """
    if values is None:
        return []
    if type(values) is list and all(type(v) is int for v in values):
        # a JSON body's ids (the server's every request): no round trip through numpy, which
        # costs several times this on a few hundred ids
        ids: list[int] = values
        low, high = min(values, default=0), max(values, default=0)
    else:
        if hasattr(values, "detach"):  # a torch tensor, as CosyVoice passes them
            values = values.detach().cpu().numpy()
        try:
            arr = np.asarray(values)
        except (ValueError, TypeError):  # ragged nesting
            raise ValueError(f"{name} must be a flat sequence of integer token ids, got {values!r:.80}") from None
        if arr.size == 0:
            return []
        if not np.issubdtype(arr.dtype, np.integer):  # bool, float, str and object are not ids
            raise ValueError(f"{name} must be integer token ids, got an array of {arr.dtype} "
                             f"({arr.reshape(-1)[0]!r}, ...)")
        flat = arr.reshape(-1)
        low, high = int(flat.min()), int(flat.max())
        ids = flat.astype(np.int64).tolist()
    if low < -_INT32_MAX - 1 or high > _INT32_MAX:
        bad = high if high > _INT32_MAX else low
        raise ValueError(f"{name}: id {bad} is outside the token id range [0, 2**31)")
    return ids


def _int(name: str, value: Any, low: int = _INT32_MIN, high: int = _INT32_MAX) -> int:
    """An integer that fits the core's field (by default a C++ int), checked before pybind's
    conversion so that a wrong type or width names the option; the core's Validate() checks what
    the option allows."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return int(value)


def _real(name: str, value: Any) -> float:
    """A real number for the core, whose Validate() then checks its range (and NaN/inf)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got {value}") from None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def request_options(
    *,
    seed: int | None = None,
    top_p: float = _SAMPLING.top_p,
    top_k: int = _SAMPLING.top_k,
    ras: bool = _SAMPLING.ras,
    win_size: int = _SAMPLING.win_size,
    tau_r: float = _SAMPLING.tau_r,
    exclude_repeated: bool = _SAMPLING.exclude_repeated,
    min_token_text_ratio: float = _LENGTH.min_token_text_ratio,
    max_token_text_ratio: float = _LENGTH.max_token_text_ratio,
    max_len: int | None = None,
    min_len: int | None = None,
) -> _core.RequestOptions:
    """Options for one request; the defaults are the core's (csrc/core/options.h). `seed=None`
    draws a fresh seed (the one place that does).

    Types and integer widths are checked here (TypeError/ValueError naming the option); what
    each option allows by the core's Validate() when the request starts. max_len and min_len
    are checked here as well: None is Python's "unset", so -1 (the core's) must not pass.
    """
    seed = secrets.randbits(63) if seed is None else _int("seed", seed, 0, _SEED_MAX)
    sampling = _core.SamplingOptions(
        top_p=_real("top_p", top_p), top_k=_int("top_k", top_k), ras=_flag("ras", ras),
        win_size=_int("win_size", win_size), tau_r=_real("tau_r", tau_r),
        exclude_repeated=_flag("exclude_repeated", exclude_repeated),
    )
    length = _core.LengthOptions(
        min_token_text_ratio=_real("min_token_text_ratio", min_token_text_ratio),
        max_token_text_ratio=_real("max_token_text_ratio", max_token_text_ratio),
        max_len=None if max_len is None else _int("max_len", max_len, 1),
        min_len=None if min_len is None else _int("min_len", min_len, 0),
    )
    return _core.RequestOptions(sampling, length, seed)


def _gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch CUDA means no GPU engine
        return False


def _make_engine(weights: LlmWeights, engine: str, max_batch: int, max_session_len: int,
                 **engine_options: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    """The core engine, the backend object behind it (lmdeploy's TurboMind, or None) and, on a
    GPU, its memory report."""
    if engine == "cpu":
        if engine_options:
            raise ValueError(f"options {sorted(engine_options)} apply to the turbomind engine only")
        return _core.CpuQwen2Engine(
            weights.config,
            weights.speech_embedding,
            weights.decoder_weight,
            weights.layers,
            weights.norm,
            max_session_len=max_session_len,
        ), None, None
    if engine == "turbomind":
        from .turbomind import make_turbomind_engine

        return make_turbomind_engine(weights, max_batch=max_batch, max_session_len=max_session_len, **engine_options)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def _resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    if _gpu_available() and hasattr(_core, "TurboMindEngine"):
        try:
            from .turbomind import check_turbomind

            check_turbomind()
            return "turbomind"
        except ImportError:
            pass
    return "cpu"


class Model:
    """A CosyVoice LLM stage on one or more engine replicas. Many requests, from many threads,
    step together; each request runs on the replica with the fewest live sessions."""

    def __init__(
        self,
        weights: LlmWeights,
        engine: str = "auto",
        *,
        max_batch: int = DEFAULTS["max_batch"],
        max_session_len: int = DEFAULTS["max_session_len"],
        table_dtype: str = "float32",
        replicas: int | None = None,
        lanes: int | None = None,
        sample_threads: int | None = None,
        devices: Sequence[int] | None = None,
        **engine_options: Any,
    ) -> None:
        self.engine = _resolve_engine(engine)
        on_gpu = self.engine == "turbomind"
        if replicas is None:
            replicas = DEFAULT_TURBOMIND_REPLICAS_PER_GPU * len(devices or [0]) if on_gpu else 1
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if on_gpu and (lanes not in (None, DEFAULTS["lanes"]) or sample_threads not in (None, DEFAULTS["sample_threads"])):
            raise ValueError("lanes and sample_threads apply to the cpu engine's round scheduler; the turbomind "
                             f"engine steps every session in TurboMind's own loop (got lanes={lanes}, "
                             f"sample_threads={sample_threads})")
        # Their ranges are the C++ generator's and scheduler's to check (when the first replica is built).
        lanes = DEFAULTS["lanes"] if lanes is None else _int("lanes", lanes)
        sample_threads = DEFAULTS["sample_threads"] if sample_threads is None else _int("sample_threads", sample_threads)
        self.kind = weights.kind
        self.vocab = dict(weights.vocab)
        if self.engine == "turbomind":
            devices = list(devices) if devices else [0]
            per_gpu = -(-replicas // len(devices))
            budget = engine_options.pop("gpu_memory", None)
            if budget is not None:  # a budget per GPU: the replicas on one GPU share it
                if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                    raise TypeError(f"gpu_memory must be a number (GB, or a fraction <= 1 of the GPU), got {budget!r}")
                engine_options["gpu_memory"] = budget / per_gpu
        elif devices:
            raise ValueError("devices applies to the turbomind engine only")
        tables = _core.PromptTables(text_embedding=weights.text_embedding, speech_embedding=weights.speech_embedding,
                                    sos=weights.sos, task_id=weights.task_id, table_dtype=table_dtype)
        self._engines: list[Any] = []
        # lmdeploy's TurboMind per replica (None on the cpu engine): private. Its Python request
        # path must not be used: its callbacks would run on a signal thread that takes no GIL.
        self._backends: list[Any] = []
        self.gpu_memory: list[dict[str, Any]] = []  # per TurboMind engine: budget, split, measured load
        generators = []
        for i in range(replicas):
            options = dict(engine_options, device=devices[i % len(devices)]) if devices else engine_options
            core_engine, backend, memory = _make_engine(weights, self.engine, max_batch, max_session_len, **options)
            self._engines.append(core_engine)
            self._backends.append(backend)
            if memory is not None:
                self.gpu_memory.append(memory)
            if on_gpu:
                generators.append(_core.TurboMindGenerator(tables=tables, vocab=weights.vocab,
                                                           decoder_bias=weights.decoder_bias, engine=core_engine))
            else:
                generators.append(_core.Generator(tables=tables, vocab=weights.vocab, decoder_bias=weights.decoder_bias,
                                                  engine=core_engine, max_batch=max_batch, lanes=lanes,
                                                  sample_threads=sample_threads))
        self._generators: list[Any] | None = generators
        # The one pick of the replica for each request (C++: decode/pool.h, as the C API's).
        self._pool = (_core.TurboMindPool if on_gpu else _core.GeneratorPool)(generators)
        self._pid = os.getpid()
        _LIVE_MODELS.add(self)

    def stream(
        self,
        text_ids: Any,
        prompt_text_ids: Any = (),
        prompt_speech_tokens: Any = (),
        **options: Any,
    ) -> _core.Stream:
        """Starts a request and returns an iterator of speech token ids as they are produced.

        `text_ids` is the text to speak without the prompt text; the model sees
        prompt_text_ids + text_ids (CosyVoice's order). Options: seed, top_p, top_k, ras,
        win_size, tau_r, exclude_repeated, min_token_text_ratio, max_token_text_ratio, max_len,
        min_len. Greedy decoding: top_k=1, ras=False. Dropping the iterator cancels the session.
        """
        return self._start(text_ids, prompt_text_ids, prompt_speech_tokens, request_options(**options))

    def _start(self, text_ids: Any, prompt_text_ids: Any, prompt_speech_tokens: Any, options: _core.RequestOptions,
               native: bool = False) -> _core.Stream:
        """`stream` with its options built. `native` (TurboMind only): TurboMind's own sampler
        instead of CosyVoice's (the bench's turbomind-native path, which starts its requests here so
        that both paths pay the same per-request work before the engine)."""
        if native and self.engine != "turbomind":
            raise ValueError(f"native sampling is TurboMind's own sampler; this model runs on {self.engine}")
        self._live()
        gen = self._pool.pick()
        ids = (_ids(text_ids, "text_ids"), _ids(prompt_text_ids, "prompt_text_ids"),
               _ids(prompt_speech_tokens, "prompt_speech_tokens"))
        return gen.start(*ids, options, native=True) if native else gen.start(*ids, options)

    def generate(self, text_ids: Any, prompt_text_ids: Any = (), prompt_speech_tokens: Any = (), **options: Any) -> list[int]:
        """Every speech token of one request (see `stream` for the arguments)."""
        return self.stream(text_ids, prompt_text_ids, prompt_speech_tokens, **options).drain()

    def bistream(
        self,
        prompt_text_ids: Any = (),
        prompt_speech_tokens: Any = (),
        *,
        mix_ratio: tuple[int, int] = (5, 15),
        **options: Any,
    ) -> _core.Stream:
        """Starts a request whose text follows in pieces (CosyVoice's inference_bistream).

        Read it with `next_event()`: a token id, `Stream.NEED_TEXT` when the session waits for the
        next piece (answer with `push_text(ids)`, or `end_text()` when there is none), or None at
        the end. The rules (5:15 interleave, fill token, tail) are in csrc/decode/bistream.h;
        `cosyfast.cosyvoice.CosyVoiceLLM.inference_bistream` drives a text iterator this way.
        Options as in `stream`; min_len does not apply. Both engines run it: the cpu engine appends
        each piece to the session's cache; TurboMind runs each decode phase (a piece's speech up
        to its fill token, or the tail) as one request fed every row so far."""
        if not isinstance(mix_ratio, (tuple, list)) or len(mix_ratio) != 2:
            raise TypeError(f"mix_ratio must be a pair (text_group, speech_group) of integers >= 1, got {mix_ratio!r}")
        # Types and widths here; the range (>= 1) is BistreamOptions::Validate's, which names them.
        text_group, speech_group = (_int(f"mix_ratio[{i}] ({name})", v)
                                    for i, (v, name) in enumerate(zip(mix_ratio, ("text_group", "speech_group"))))
        self._live()
        gen = self._pool.pick()
        return gen.start_bistream(
            _ids(prompt_text_ids, "prompt_text_ids"),
            _ids(prompt_speech_tokens, "prompt_speech_tokens"),
            request_options(**options),
            text_group=text_group,
            speech_group=speech_group,
        )

    @property
    def replicas(self) -> int:
        return len(self._live())

    @property
    def lanes(self) -> int:
        """Scheduler lanes per replica: threads that each step their own sessions over the engine."""
        return self._live()[0].lanes

    @property
    def live_sessions(self) -> int:
        """Requests started and not yet finished (waiting or decoding), all replicas together."""
        return sum(g.live_sessions for g in self._live())

    @property
    def parked_sessions(self) -> int:
        """Live bistream requests waiting for their next piece of text, all replicas together."""
        return sum(g.parked_sessions for g in self._live())

    @property
    def engine_live_sessions(self) -> int:
        """Sessions whose KV cache an engine holds, all replicas together: 0 once every request
        has ended (a leak check; exact while no round runs)."""
        return sum(g.engine_live_sessions for g in self._live())

    @property
    def stats(self) -> dict[str, Any]:
        """Counters summed over replicas. Every engine: tokens, sessions_finished. The cpu engine's
        round scheduler: rounds, parallel_rounds. TurboMind: finished sessions by reason
        (finished_stop_token, finished_max_len, finished_cancelled, finished_error) and
        engine_iterations, the iterations TurboMind's own loop has run, and gpu_memory: per engine
        its budget and split (budget_mb, weights_mb, kv_cache_mb, kv_needed_mb, workspace_mb) and
        loaded_mb, the GPU memory its load took (measured); decode_graph_steps: decode steps
        replayed from CUDA graphs, captured, run eagerly and failed captures (process-wide, since
        the start; decode_graphs=True)."""
        gens = self._live()
        total: dict[str, Any] = {k: sum(g.stats[k] for g in gens) for k in gens[0].stats}
        if self.engine == "turbomind" and hasattr(_core, "_turbomind_decode_graph_counts"):
            total["decode_graph_steps"] = dict(zip(("replayed", "captured", "eager", "failed"),
                                                   _core._turbomind_decode_graph_counts()))
        if self.gpu_memory:
            total["gpu_memory"] = [dict(m) for m in self.gpu_memory]
        return total

    @property
    def max_session_len(self) -> int:
        return self._live()[0].max_session_len

    def close(self) -> None:
        """Cancels every live request and frees the engines."""
        self._generators = None
        self._pool = None
        self._engines = []
        self._backends = []

    def _live(self) -> list[_core.Generator]:
        if self._generators is None:
            raise RuntimeError("this model is closed")
        if self._pid != os.getpid():
            raise RuntimeError(_FORKED)
        return self._generators

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        n = len(self._generators or ())
        return f"Model(kind={self.kind!r}, engine={self.engine!r}, replicas={n})"


def _close_all_at_exit(grace_s: float = 5.0) -> None:
    """Closes every live model before the interpreter finalises, then lets each thread that
    waits for tokens (a daemon thread iterating a stream, say) return to Python: a thread that
    still waits when finalisation starts would abort the process as it takes the GIL back."""
    for model in list(_LIVE_MODELS):
        if model._pid == os.getpid():
            model.close()
    deadline = time.monotonic() + grace_s
    while _core._waiting_readers() and time.monotonic() < deadline:
        time.sleep(0.001)  # lets the GIL go, so the woken readers can leave their waits


atexit.register(_close_all_at_exit)


def load(path: str | os.PathLike[str] | LlmWeights, engine: str = "auto", **options: Any) -> Model:
    """Loads a CosyVoice2/3 `llm.pt` (or a model directory holding one) onto an engine.

    engine: "cpu" (reference float32 forward), "turbomind" (TurboMind built from lmdeploy's source
    with cosyfast's patch, on an NVIDIA GPU) or "auto" (turbomind where a GPU and that engine are
    present, else cpu). Options as `Model`: max_batch, max_session_len, table_dtype ("float32" or
    "bfloat16" prompt tables), replicas (engines; default 1 per GPU on turbomind, 1 on cpu),
    devices (GPU ids the turbomind replicas are spread over), gpu_memory (turbomind: GB or a
    fraction per GPU; default what max_batch sessions of max_session_len need), and on cpu lanes
    (scheduler threads) and sample_threads (helpers sharing a large round's sampling); on turbomind
    cache_max_entry_count (TurboMind's share of free memory instead of a budget) and loader ("cpp",
    the default: weights uploaded from C++; "lmdeploy": through lmdeploy's converter, after which any
    other keyword goes to its TurbomindEngineConfig: async_, ...).
    """
    weights = path if isinstance(path, LlmWeights) else load_checkpoint(Path(path))
    return Model(weights, engine, **options)
