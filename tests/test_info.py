"""`cosyfast info` on the CPU: the text and --json reports, and that a missing or broken torch
and a GPU seen only through nvidia-smi are reported, not raised."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cosyfast
from cosyfast import _core


def run_info(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> str:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cosyfast.cli", "info", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def info_json(**kwargs: Any) -> dict[str, Any]:
    return json.loads(run_info("--json", **kwargs))


def test_build_info_from_the_extension() -> None:
    b = _core.build_info()
    assert b["cxx_standard"].startswith("C++20")  # CMAKE_CXX_STANDARD 20
    assert b["compiler"].split()[0] in ("gcc", "clang", "msvc")
    assert isinstance(b["openmp"], bool) and (b["openmp_version"] is None) == (not b["openmp"])
    assert "NDEBUG" in b["build_type"] or b["build_type"] in ("Release", "RelWithDebInfo", "MinSizeRel", "Debug")
    # COSYFAST_WITH_TURBOMIND comes with the TurboMind binding; without it no lmdeploy version is recorded
    assert not b["with_turbomind"] or hasattr(_core, "TurboMindEngine")
    assert b["with_turbomind"] or b["lmdeploy_version"] is None
    assert b["pybind11_version"].count(".") >= 2


def test_info_json_on_this_machine() -> None:
    info = info_json()
    assert info["cosyfast"] == cosyfast.__version__
    assert info["build"] == _core.build_info()
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["numpy"] == np.__version__
    assert info["versions"]["python"].startswith(platform.python_version())
    assert info["engines"]["cpu"] == {"available": True, "reasons": []}
    tm = info["engines"]["turbomind"]
    assert tm["available"] == (not tm["reasons"])
    assert info["engines"]["auto"] == ("turbomind" if tm["available"] else "cpu")
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["cuda"]["torch_cuda_runtime"] == torch.version.cuda
    # The engine library that was loaded is the installed package's (lib/, beside _core).
    engine = Path(info["libraries"]["libcosyfast_engine.so"])
    assert engine.parent == Path(_core.__file__).parent / "lib", engine
    if _core.build_info()["with_turbomind"]:
        assert {"libcudart.so", "libcublas.so"} <= set(info["libraries"]), info["libraries"]
    if not torch.cuda.is_available():
        assert not tm["available"] and "no CUDA GPU visible to torch" in tm["reasons"]
    else:
        assert len(info["cuda"]["gpus"]) == torch.cuda.device_count()
        assert all(g["memory_gib"] > 0 and g["name"] for g in info["cuda"]["gpus"])


def test_info_text_on_this_machine() -> None:
    out = run_info()
    lines = out.splitlines()
    b = _core.build_info()
    assert lines[0] == f"cosyfast {cosyfast.__version__}"
    assert lines[1].startswith(f"build: {b['compiler']}, C++20") and ("OpenMP on" in lines[1]) == b["openmp"]
    assert "  cpu        available" in lines
    assert any(line.startswith("  turbomind  ") for line in lines)
    assert f"torch {torch.__version__}, numpy {np.__version__}" in out
    assert f"platform: {platform.platform()}" in lines
    if not torch.cuda.is_available() and not info_json()["cuda"]["gpus"]:
        assert "CUDA: no CUDA" in lines


def test_info_without_torch(tmp_path: Path) -> None:
    # a torch whose import fails the way a CUDA library mismatch does
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object file')\n")
    info = info_json(env={"PYTHONPATH": str(tmp_path)})
    assert info["versions"]["torch"].startswith("not importable (OSError: libcudart.so.12")
    assert info["engines"]["cpu"]["available"]
    assert not info["engines"]["turbomind"]["available"]
    assert any(n.startswith("torch CUDA probe failed") for n in info["cuda"]["notes"])
    # and absent altogether, through the Python entry point
    code = "import sys; sys.modules['torch'] = None; from cosyfast.cli import main; sys.exit(main(['info']))"
    out = run_info(code=code)
    assert "torch not importable (ModuleNotFoundError" in out and "  cpu        available" in out


def test_info_gpu_through_nvidia_smi(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H200, 143771, 570.86.15'\necho '1, NVIDIA H200, 143771, 570.86.15'\n")
    smi.chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    info = info_json(env=env)
    assert info["cuda"]["driver"] == "570.86.15"
    if torch.cuda.is_available():
        pytest.skip("torch sees the GPUs; nvidia-smi only supplies the driver")
    assert info["cuda"]["source"] == "nvidia-smi"
    assert info["cuda"]["gpus"] == [dict(index=i, name="NVIDIA H200", memory_gib=140.4) for i in (0, 1)]
    assert not info["engines"]["turbomind"]["available"]  # torch cannot drive them
    out = run_info(env=env)
    assert "GPUs via nvidia-smi:" in out and "  1: NVIDIA H200, 140.4 GiB" in out


def test_turbomind_reasons() -> None:
    from types import SimpleNamespace

    from cosyfast.info import _engines

    none = _engines({"with_turbomind": False}, SimpleNamespace(CpuQwen2Engine=1), {"available": True})
    assert none["turbomind"] == {"available": False, "reasons": [none["turbomind"]["reasons"][0]]}
    assert none["turbomind"]["reasons"][0].startswith("not compiled in") and none["auto"] == "cpu"
    # compiled in, but this machine has no GPU (and, on the CPU, no matching lmdeploy either)
    built = _engines({"with_turbomind": True}, SimpleNamespace(CpuQwen2Engine=1), {"available": False})
    assert built["turbomind"]["reasons"][-1] == "no CUDA GPU visible to torch"
    assert not any(r.startswith("not compiled in") for r in built["turbomind"]["reasons"])
    broken = _engines({"error": "cosyfast._core not importable (x)"}, None, {"available": False})
    assert broken["cpu"] == {"available": False, "reasons": ["cosyfast._core not importable (x)"]}
    assert broken["auto"] is None


def test_import_is_lazy_but_complete() -> None:
    # `import cosyfast` loads neither torch nor the extension (so `cosyfast info` can report them),
    # and every name and submodule an eager import gave is still there
    code = ("import sys, cosyfast; assert 'torch' not in sys.modules and 'cosyfast._core' not in sys.modules; "
            "assert cosyfast._core.build_info() and cosyfast.checkpoint.CheckpointError is cosyfast.CheckpointError; "
            "assert all(getattr(cosyfast, n) for n in cosyfast.__all__); assert not hasattr(cosyfast, 'nope'); "
            "print('ok')")
    assert run_info(code=code).strip() == "ok"
