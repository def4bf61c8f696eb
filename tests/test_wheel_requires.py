"""packaging/wheel_requires.py: what gpu_wheel_check.sh installs for a wheel when pip's resolver
stops at torch's own unmet requirements (the GPU image's torch lacks cuda-toolkit's extras)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "packaging" / "wheel_requires.py"
METADATA = """Metadata-Version: 2.1
Name: cosyfast
Version: 0.1.0+cu13
Requires-Dist: numpy>=1.24
Requires-Dist: torch >=2.1
Requires-Dist: safetensors>=0.4
Requires-Dist: nvidia-cuda-runtime<14,>=13.0
Requires-Dist: pywin32; sys_platform == "win32"
Requires-Dist: fastapi>=0.110; extra == "serve"

"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_own_requirements_without_extras_other_platforms_or_skipped(tmp_path: Path) -> None:
    wheel = tmp_path / "cosyfast-0.1.0+cu13-cp312-cp312-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("cosyfast-0.1.0+cu13.dist-info/METADATA", METADATA)
        z.writestr("cosyfast/__init__.py", "")
    out = _run(str(wheel), "--skip", "Torch")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy>=1.24", "safetensors>=0.4", "nvidia-cuda-runtime<14,>=13.0"]
    assert "torch>=2.1" in _run(str(wheel)).stdout.split()


@pytest.mark.parametrize("entries", [[], ["a-1.dist-info/METADATA", "b-1.dist-info/METADATA"]])
def test_a_wheel_without_one_metadata_is_named(tmp_path: Path, entries: list[str]) -> None:
    wheel = tmp_path / "broken-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("broken/__init__.py", "")
        for e in entries:
            z.writestr(e, METADATA)
    out = _run(str(wheel))
    assert out.returncode != 0
    assert str(wheel) in out.stderr and f"found {len(entries)}" in out.stderr
