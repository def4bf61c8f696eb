"""The GPU test modules' module-level skip: no torch, no CUDA GPU, or a cosyfast built without the
TurboMind engine (a CPU build, CI) each skip the whole module with the reason."""
from __future__ import annotations

import pytest


def require_gpu_engine(needs_lmdeploy: bool = False, no_gpu_hint: str = "") -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU" + no_gpu_hint, allow_module_level=True)
    try:
        from cosyfast.turbomind import check_turbomind

        check_turbomind(needs_lmdeploy=needs_lmdeploy)
    except ImportError as e:  # pragma: no cover - depends on the machine
        what = "the turbomind engine or its reference converter" if needs_lmdeploy else "the turbomind engine"
        pytest.skip(f"{what} is unavailable: {e}", allow_module_level=True)
