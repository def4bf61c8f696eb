"""Sets up the TurboMind engine for the C++ core.

The engine is TurboMind built from lmdeploy's source with cosyfast's patch (a package built with
COSYFAST_TURBOMIND=ON; README, "The TurboMind engine"). Its weights are uploaded from C++ in
TurboMind's layout (csrc/engines/turbomind/tm_loader.h; the C API loads bundles the same way), or,
with loader="lmdeploy", by lmdeploy's own converter (the lmdeploy Python package): lmdeploy's
binding is compiled into cosyfast._core and imported from that file as `_turbomind`, so the
converter fills the TurboMind that the C++ engine then drives. Each utterance runs in TurboMind's
own generation loop, RAS and the decoder bias included; Python is not on the token path.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from . import _core
from .checkpoint import LlmWeights
from .export import export_turbomind

# The lmdeploy Python package whose converter loads the weights: the release the engine's
# source is pinned to (third_party/README.md).
LMDEPLOY_VERSION = getattr(_core, "LMDEPLOY_VERSION", "0.16.0")
LOADERS = ("cpp", "lmdeploy")  # who uploads the weights: cosyfast's C++, or lmdeploy's Python converter
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


def check_turbomind(needs_lmdeploy: bool = False) -> Any:
    """Raises ImportError naming what is missing for the TurboMind engine; returns lmdeploy (None
    unless needs_lmdeploy: only loader="lmdeploy" imports it)."""
    if not built():
        raise ImportError(f"this cosyfast was built without the TurboMind engine: {BUILD_HINT}")
    _bound_modules()
    if not needs_lmdeploy:
        return None
    try:
        import lmdeploy
    except ImportError as e:
        raise ImportError(f"loader='lmdeploy' loads weights with lmdeploy {LMDEPLOY_VERSION}'s converter "
                          f"(pip install '.[turbomind]' from a checkout); import failed: {e}") from e
    version = getattr(lmdeploy, "__version__", "unknown")
    if version != LMDEPLOY_VERSION:
        raise ImportError(f"the turbomind engine was built from lmdeploy {LMDEPLOY_VERSION}'s source and loads "
                          f"weights with that release's converter; found lmdeploy {version}")
    return lmdeploy


# The plan is C++'s (csrc/core/gpu_memory.h, shared with the C API); these are its constants:
# TurboMind's own buffers besides weights and KV cache, and its cache block of 64 positions.
WORKSPACE_BYTES: int = _core.GPU_WORKSPACE_BYTES
CACHE_BLOCK_TOKENS: int = _core.CACHE_BLOCK_TOKENS


@dataclass(frozen=True)
class MemoryPlan:
    """What one TurboMind engine may allocate on its GPU, and how it is split (_core.plan_gpu_memory's)."""

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
    return MemoryPlan(**_core.plan_gpu_memory(weights.config, weights.padded_vocab(), max_batch, max_session_len,
                                              total_bytes, gpu_memory))


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


def _load_with_lmdeploy(weights: LlmWeights, export_cache: Path | None, *, device: int, max_batch: int,
                        max_session_len: int, cache_max_entry_count: float, **engine_config: Any) -> Any:
    """lmdeploy's TurboMind object, its weights loaded by lmdeploy's own converter from the exported
    model directory: the reference the C++ loader is checked against (tests/test_turbomind_gpu.py)."""
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
        return TurboMind.from_pretrained(str(model_dir), engine_config=config)


def make_turbomind_engine(
    weights: LlmWeights,
    *,
    max_batch: int = _core.DEFAULTS["max_batch"],
    max_session_len: int = _core.DEFAULTS["max_session_len"],
    gpu_memory: float | None = None,
    cache_max_entry_count: float | None = None,
    export_cache: Path | None = None,
    device: int = 0,
    loader: str = "cpp",
    fast_decode: bool = True,
    decode_graphs: bool | None = None,
    **engine_config: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    """Loads the checkpoint into a TurboMind on `device` and wraps it for the C++ core.
    loader: "cpp" (default) uploads the weights from C++ in TurboMind's layout (no lmdeploy
    package needed); "lmdeploy" exports the checkpoint (cached) and loads it with lmdeploy's own
    converter, the reference the C++ loader gives bit-identical logits to (tests), and then
    other keywords are TurbomindEngineConfig fields (async_, ...). gpu_memory: this engine's
    budget (see plan_gpu_memory); or, instead, cache_max_entry_count: the share of free GPU memory
    TurboMind's KV cache takes (0 < x < 1). Returns the core engine, the TurboMind object
    (lmdeploy's wrapper with loader="lmdeploy") and the memory report (budget, its split, what
    the load took). fast_decode: decode-sized GEMMs (<= 256 rows) run through cuBLASLt (cosyfast's
    hook in the patch); False keeps TurboMind's own GEMM kernels, as lmdeploy ships them.
    decode_graphs: decode steps replay their decoder layers from CUDA graphs
    (third_party/turbomind/CUDA_GRAPHS.md); default: with fast_decode (True needs it)."""
    if decode_graphs is None:
        decode_graphs = fast_decode
    for name, value in (("fast_decode", fast_decode), ("decode_graphs", decode_graphs)):
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if decode_graphs and not fast_decode:
        raise ValueError("decode_graphs needs fast_decode (its CUDA graphs capture the decode GEMM hook's kernels)")
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    if loader == "cpp" and engine_config:
        raise ValueError(f"options {sorted(engine_config)} are lmdeploy TurbomindEngineConfig fields, read only "
                         "with loader='lmdeploy'; the C++ loader takes gpu_memory or cache_max_entry_count")
    check_turbomind(needs_lmdeploy=loader == "lmdeploy")
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
        cache_max_entry_count = _core.cache_max_entry_count(asdict(plan), free)
        report.update(plan.as_dict())
    if loader == "cpp":
        tm = _core._load_turbomind(weights.config, weights.speech_embedding, weights.decoder_weight, weights.layers,
                                   weights.norm, device=device, max_batch=max_batch, max_session_len=max_session_len,
                                   cache_max_entry_count=cache_max_entry_count, fast_decode=bool(fast_decode),
                                   decode_graphs=bool(decode_graphs))
        model = tm
    else:
        # lmdeploy's Python creates the context and the engine: the switches are held around its load
        scope = _core._DecodeScope(bool(fast_decode), bool(decode_graphs))
        try:
            tm = _load_with_lmdeploy(weights, export_cache, device=device, max_batch=max_batch,
                                     max_session_len=max_session_len, cache_max_entry_count=cache_max_entry_count,
                                     **engine_config)
        finally:
            del scope
        model = tm.model_comm
    engine = _core.TurboMindEngine(model=model, hidden_size=int(weights.config["hidden_size"]),
                                   vocab_size=weights.padded_vocab(), max_session_len=max_session_len)
    report["fast_decode"] = bool(fast_decode)
    report["decode_graphs"] = bool(decode_graphs)
    report["loaded_mb"] = round((free - _device_memory(device)[0]) / (1 << 20), 1)  # weights + cache + workspace
    return engine, tm, report
