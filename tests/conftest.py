"""Shared fixtures: one tiny synthetic CosyVoice2 and one CosyVoice3 model directory per session,
and their CPU bundles (what the C/C++ host tests run on).

Built once (about 0.3 s each) in a session tmp dir; tests must treat them as read-only and copy
what they want to modify.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cosyfast.bundle import export_cpu_bundle
from cosyfast.checkpoint import load_checkpoint
from cosyfast.synthetic import write_model_dir


@pytest.fixture(scope="session")
def synthetic_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic_models")


@pytest.fixture(scope="session")
def tiny_cv2_dir(synthetic_models_dir: Path) -> Path:
    return write_model_dir(synthetic_models_dir / "cv2-tiny", kind="cosyvoice2", size="tiny",
                           seed=0)


@pytest.fixture(scope="session")
def tiny_cv3_dir(synthetic_models_dir: Path) -> Path:
    return write_model_dir(synthetic_models_dir / "cv3-tiny", kind="cosyvoice3", size="tiny",
                           seed=0)


@pytest.fixture(scope="session")
def tiny_dirs(tiny_cv2_dir: Path, tiny_cv3_dir: Path) -> dict[str, Path]:
    """The tiny model directories by kind name."""
    return {"cosyvoice2": tiny_cv2_dir, "cosyvoice3": tiny_cv3_dir}


@pytest.fixture(scope="session")
def bundles(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models' CPU bundles by kind name (cosyfast.bundle.export_cpu_bundle)."""
    root = tmp_path_factory.mktemp("bundles")
    return {kind: export_cpu_bundle(load_checkpoint(d), root / kind) for kind, d in tiny_dirs.items()}
