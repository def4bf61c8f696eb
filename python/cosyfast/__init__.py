"""cosyfast: CosyVoice2/3's LLM stage (text + voice prompt -> speech tokens), fast and concurrent,
with CosyVoice's exact repetition-aware sampling."""
import os as _os
from importlib import metadata as _metadata

# The CPU engine's OpenMP threads otherwise spin while waiting, which made a step 5-10x slower
# whenever other work shared the cores. Only effective before the OpenMP runtime loads; a value
# the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Stream
    from .checkpoint import CheckpointError, LlmWeights, load_checkpoint
    from .model import Model, load

# Imported on first use, so that `cosyfast info` still runs (and reports) where torch or the
# extension fails to import.
_LAZY = {
    "Stream": "_core",
    "CheckpointError": "checkpoint", "LlmWeights": "checkpoint", "load_checkpoint": "checkpoint",
    "Model": "model", "load": "model",
}


def __getattr__(name: str) -> Any:
    import importlib
    import importlib.util

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f".{name}", __name__) is not None:
        value = importlib.import_module(f".{name}", __name__)  # cosyfast._core, cosyfast.model, ...
    else:
        raise AttributeError(f"module 'cosyfast' has no attribute {name!r}")
    globals()[name] = value
    return value


try:  # pyproject.toml's version, the one place it is typed (the extension has it too: build_info())
    __version__ = _metadata.version(__name__)
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "unknown"
__all__ = [
    "CheckpointError",
    "LlmWeights",
    "Model",
    "Stream",
    "load",
    "load_checkpoint",
]
