"""min_len > max_len is refused by the C++ core's one check (LengthOptions::Validate), so the
Python API, the C API (through the host program) and the service (tests/test_serve.py) say the
same sentence instead of stopping at max_len with min_len unmet."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import cosyfast
from cosyfast.bundle import host_program

SENTENCE = "min_len must be <= max_len, got min_len=10 and max_len=5"


def test_python_api_refuses_min_len_over_max_len(tiny_cv2_dir: Path) -> None:
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        with pytest.raises(ValueError, match=SENTENCE):
            m.generate([1, 2, 3], min_len=10, max_len=5)
        with pytest.raises(ValueError, match=SENTENCE):
            m.bistream([1], [2], min_len=10, max_len=5)
        assert len(m.generate([1, 2, 3], min_len=5, max_len=5, seed=0)) == 5  # equal is fine
        assert m.live_sessions == 0


def test_c_api_refuses_min_len_over_max_len(bundles: dict[str, Path]) -> None:
    proc = subprocess.run([str(host_program()), str(bundles["cosyvoice2"]), "--text", "1,2,3", "--min-len", "10",
                           "--max-len", "5"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert SENTENCE in proc.stderr
