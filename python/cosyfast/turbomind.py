"""Sets up the TurboMind engine for the C++ core.

The engine is TurboMind built from lmdeploy's source with cosyfast's patch (a package built with
COSYFAST_TURBOMIND=ON; README, "The TurboMind engine"). Its weights are loaded by lmdeploy's own
converter (the lmdeploy Python package); lmdeploy's binding is compiled into cosyfast._core and
imported from that file as `_turbomind`, so the converter fills the TurboMind that the C++ engine
then drives. Each utterance runs in TurboMind's own generation loop, RAS and the decoder bias
included; Python is not on the token path.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from . import _core
from .checkpoint import LlmWeights
from .export import export_turbomind

# The lmdeploy Python package whose converter loads the weights: the release the engine's
# source is pinned to (third_party/README.md).
LMDEPLOY_VERSION = getattr(_core, "LMDEPLOY_VERSION", "0.16.0")
BUILD_HINT = ("build cosyfast with the GPU engine: pip install . -C cmake.define.COSYFAST_TURBOMIND=ON "
              "-C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real (README, 'The TurboMind engine')")


def built() -> bool:
    """Whether this cosyfast was built with the TurboMind engine."""
    return hasattr(_core, "TurboMindEngine")


def _bound_modules() -> dict[str, ModuleType]:
    """lmdeploy's `_turbomind` and `_xgrammar` modules, loaded from cosyfast._core's own file and
    registered under those names before lmdeploy imports them."""
    out = {}
    path = _core.__file__
    for name in ("_turbomind", "_xgrammar"):
        module = sys.modules.get(name)
        if module is None:
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            sys.modules[name] = module
        elif getattr(module, "__file__", None) != path:
            raise ImportError(f"another {name} module ({module.__file__}) was imported before cosyfast's TurboMind "
                              "engine: import cosyfast's engine first, or keep lmdeploy's own TurboMind out of "
                              "this process")
        out[name] = module
    return out


def check_turbomind() -> Any:
    """Raises ImportError naming what is missing for the TurboMind engine; returns lmdeploy."""
    if not built():
        raise ImportError(f"this cosyfast was built without the TurboMind engine: {BUILD_HINT}")
    _bound_modules()
    try:
        import lmdeploy
    except ImportError as e:
        raise ImportError(f"the turbomind engine loads weights with lmdeploy {LMDEPLOY_VERSION}'s converter "
                          f"(pip install 'cosyfast[turbomind]'); import failed: {e}") from e
    version = getattr(lmdeploy, "__version__", "unknown")
    if version != LMDEPLOY_VERSION:
        raise ImportError(f"the turbomind engine was built from lmdeploy {LMDEPLOY_VERSION}'s source and loads "
                          f"weights with that release's converter; found lmdeploy {version}")
    return lmdeploy


GIB = 1 << 30
# TurboMind's own buffers besides weights and KV cache (activations for max_prefill_token_num
# tokens, logits, sampling state, cuBLAS workspace), measured on an H200 (benchmarks/README.md):
# the default budget leaves this much on top of weights and cache.
WORKSPACE_BYTES = int(1.5 * GIB)
CACHE_BLOCK_TOKENS = 64  # TurboMind's cache_block_seq_len: KV is allocated in blocks of this many positions


@dataclass(frozen=True)
class MemoryPlan:
    """What one TurboMind engine may allocate on its GPU, and how it is split."""

    budget_bytes: int
    weights_bytes: int
    kv_bytes: int          # the KV cache max_batch sessions of max_session_len need
    workspace_bytes: int

    @property
    def cache_bytes(self) -> int:
        """What the KV cache gets: the budget less weights and workspace."""
        return self.budget_bytes - self.weights_bytes - self.workspace_bytes

    def as_dict(self) -> dict[str, float]:
        mb = 1 << 20
        return {"budget_mb": round(self.budget_bytes / mb, 1), "weights_mb": round(self.weights_bytes / mb, 1),
                "kv_cache_mb": round(self.cache_bytes / mb, 1), "kv_needed_mb": round(self.kv_bytes / mb, 1),
                "workspace_mb": round(self.workspace_bytes / mb, 1)}


def plan_gpu_memory(weights: LlmWeights, *, max_batch: int, max_session_len: int, total_bytes: int,
                    gpu_memory: float | None = None) -> MemoryPlan:
    """The memory budget of one engine. gpu_memory: GB, or a fraction (<= 1) of the GPU's memory;
    None: what max_batch sessions of max_session_len need plus the workspace. Raises ValueError
    with the numbers when the budget cannot hold them."""
    c = weights.config
    per_position = c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * c["head_dim"] * 2  # K and V, bf16
    blocks = max_batch * -(-max_session_len // CACHE_BLOCK_TOKENS)
    kv = blocks * CACHE_BLOCK_TOKENS * per_position
    params = 2 * weights.padded_vocab() * c["hidden_size"] + weights.norm.size
    params += sum(v.size for layer in weights.layers for v in layer.values())
    plan = MemoryPlan(budget_bytes=0, weights_bytes=2 * params, kv_bytes=kv, workspace_bytes=WORKSPACE_BYTES)
    if gpu_memory is None:
        budget = plan.weights_bytes + kv + plan.workspace_bytes
    else:
        if isinstance(gpu_memory, bool) or not isinstance(gpu_memory, (int, float)) or not 0 < gpu_memory < 1e6:
            raise ValueError(f"gpu_memory must be GB (> 1) or a fraction of the GPU's memory (<= 1), got {gpu_memory!r}")
        budget = int(gpu_memory * total_bytes) if gpu_memory <= 1 else int(gpu_memory * GIB)
    plan = MemoryPlan(budget_bytes=budget, weights_bytes=plan.weights_bytes, kv_bytes=kv,
                      workspace_bytes=plan.workspace_bytes)
    if budget > total_bytes:
        raise ValueError(f"gpu_memory {budget / GIB:.2f} GB is more than the GPU's {total_bytes / GIB:.2f} GB")
    if plan.cache_bytes < kv:
        fits = max(plan.cache_bytes, 0) // (-(-max_session_len // CACHE_BLOCK_TOKENS) * CACHE_BLOCK_TOKENS * per_position)
        raise ValueError(
            f"gpu_memory {budget / GIB:.2f} GB cannot hold {max_batch} sessions of {max_session_len} positions: "
            f"weights {plan.weights_bytes / GIB:.2f} GB + KV cache {kv / GIB:.2f} GB + workspace "
            f"{plan.workspace_bytes / GIB:.2f} GB = {(plan.weights_bytes + kv + plan.workspace_bytes) / GIB:.2f} GB; "
            f"it holds {fits} such sessions: lower max_batch or max_session_len, or give more memory")
    return plan


@contextmanager
def _created_by_cosyfast(tm_module: Any) -> Iterator[None]:
    """While lmdeploy loads a model, TurboMind objects come from cosyfast's factory: the same
    class, but its signal thread takes no GIL (cosyfast's callbacks are C++)."""
    cls = tm_module.TurboMind
    original = cls.__dict__["create"]
    cls.create = staticmethod(_core._create_turbomind)
    try:
        yield
    finally:
        cls.create = original


def _device_memory(device: int) -> tuple[int, int]:
    """(free, total) bytes on the GPU."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)


def make_turbomind_engine(
    weights: LlmWeights,
    *,
    max_batch: int = _core.DEFAULTS["max_batch"],
    max_session_len: int = _core.DEFAULTS["max_session_len"],
    gpu_memory: float | None = None,
    cache_max_entry_count: float | None = None,
    export_cache: Path | None = None,
    device: int = 0,
    **engine_config: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    """Exports the checkpoint (cached), loads it into TurboMind with lmdeploy's converter and wraps
    it for the C++ core. gpu_memory: this engine's budget (see plan_gpu_memory); or, instead,
    cache_max_entry_count: the share of free GPU memory TurboMind's KV cache takes (0 < x < 1).
    Other keywords are TurbomindEngineConfig fields (async_, ...). Returns the core engine,
    lmdeploy's TurboMind object and the memory report (budget, its split, what the load took)."""
    check_turbomind()
    if cache_max_entry_count is not None and gpu_memory is not None:
        raise ValueError("give gpu_memory (a budget) or cache_max_entry_count (a share of free memory), not both")
    if cache_max_entry_count is not None and not 0.0 < cache_max_entry_count < 1.0:
        raise ValueError(f"cache_max_entry_count must be in (0, 1) (a share of free GPU memory), "
                         f"got {cache_max_entry_count}")
    free, total = _device_memory(device)
    report: dict[str, Any] = {"device": device}
    if cache_max_entry_count is None:
        plan = plan_gpu_memory(weights, max_batch=max_batch, max_session_len=max_session_len, total_bytes=total,
                               gpu_memory=gpu_memory)
        # TurboMind sizes its cache as a share of the memory free once the weights are in.
        free_then = free - plan.weights_bytes - plan.workspace_bytes
        if plan.cache_bytes >= free_then:
            raise ValueError(f"the GPU has {free / GIB:.2f} GB free, too little for a budget of "
                             f"{plan.budget_bytes / GIB:.2f} GB")
        cache_max_entry_count = plan.cache_bytes / free_then
        report.update(plan.as_dict())
    from lmdeploy import TurbomindEngineConfig
    from lmdeploy.turbomind import TurboMind

    tm_module = _bound_modules()["_turbomind"]
    model_dir = export_turbomind(weights, export_cache, session_len=max_session_len)
    try:
        config = TurbomindEngineConfig(dtype="bfloat16", max_batch_size=max_batch, session_len=max_session_len,
                                       cache_max_entry_count=cache_max_entry_count, devices=[device], **engine_config)
    except TypeError as e:
        raise ValueError(f"unknown turbomind engine option: {e}") from e
    with _created_by_cosyfast(tm_module):
        tm = TurboMind.from_pretrained(str(model_dir), engine_config=config)
    engine = _core.TurboMindEngine(model=tm.model_comm, hidden_size=int(weights.config["hidden_size"]),
                                   vocab_size=weights.padded_vocab(), max_session_len=max_session_len)
    report["loaded_mb"] = round((free - _device_memory(device)[0]) / (1 << 20), 1)  # weights + cache + workspace
    return engine, tm, report
