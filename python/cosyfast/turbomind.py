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


def make_turbomind_engine(
    weights: LlmWeights,
    *,
    max_batch: int = 256,
    max_session_len: int = 4096,
    cache_max_entry_count: float = 0.5,
    export_cache: Path | None = None,
    device: int = 0,
    **engine_config: Any,
) -> tuple[Any, Any]:
    """Exports the checkpoint (cached), loads it into TurboMind with lmdeploy's converter and wraps
    it for the C++ core. cache_max_entry_count: the share of free GPU memory TurboMind's KV cache
    takes (0 < x < 1). Other keywords are TurbomindEngineConfig fields (async_, ...). Returns the
    core engine and lmdeploy's TurboMind object."""
    check_turbomind()
    if not 0.0 < cache_max_entry_count < 1.0:
        raise ValueError(f"cache_max_entry_count must be in (0, 1) (a share of free GPU memory), "
                         f"got {cache_max_entry_count}")
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
    return engine, tm
