"""The engine is compiled and linked once (issue 20): libcosyfast_engine.so holds the core (and, in
a GPU build, TurboMind); the Python module and libcosyfast.so (the C API) both load it from the
package's lib/ by a relative RPATH, and neither carries a copy of the core's code.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cosyfast import _core
from cosyfast._paths import library_dir

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("nm") is None,
                                reason="needs binutils (readelf, nm)")

ENGINE = "libcosyfast_engine.so"
# A function of the core every build has (decode/generator.cc): it must be defined in the engine
# library only.
CORE_SYMBOL = re.compile(r"^_ZN8cosyfast.*9Generator")


def _dynamic(path: Path) -> tuple[list[str], list[str]]:
    """(NEEDED, RUNPATH entries) of an ELF file."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    runpath = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[([^\]]+)\]", out)
    return needed, [p for entry in runpath for p in entry.split(":")]


def _defined(path: Path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", "--format=just-symbols", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def test_one_engine_library_shared_by_the_module_and_the_c_api():
    lib = library_dir()
    module = Path(_core.__file__)
    engine = lib / ENGINE
    assert engine.is_file(), sorted(p.name for p in lib.iterdir())
    for user, origin_path in ((module, "$ORIGIN/lib"), (lib / "libcosyfast.so", "$ORIGIN")):
        needed, runpath = _dynamic(user)
        assert ENGINE in needed, (user.name, needed)
        assert origin_path in runpath, (user.name, runpath)
        assert not [s for s in _defined(user) if CORE_SYMBOL.match(s)], f"{user.name} carries the core's code"
    assert [s for s in _defined(engine) if CORE_SYMBOL.match(s)], "the engine library lacks the core"
    # Only the C API leaves libcosyfast.so (the engine's C++ symbols stay in the engine library).
    exported = [s for s in _defined(lib / "libcosyfast.so") if not s.startswith("cosyfast_")]
    assert exported == [], exported[:10]
    for program in ("cosyfast-host", "cosyfast-load"):
        needed, runpath = _dynamic(lib.parent / "bin" / program)
        assert "libcosyfast.so" in needed and "$ORIGIN/../lib" in runpath, (program, needed, runpath)


@pytest.mark.skipif(not _core.build_info()["with_turbomind"], reason="a GPU build (COSYFAST_TURBOMIND=ON)")
def test_turbomind_is_linked_once():
    """TurboMind's code (e.g. its TurboMind class) is defined in the engine library, not in _core."""
    engine = library_dir() / ENGINE
    tm = re.compile(r"^_ZN9turbomind9TurboMind")
    assert [s for s in _defined(engine) if tm.match(s)]
    assert not [s for s in _defined(Path(_core.__file__)) if tm.match(s)]
