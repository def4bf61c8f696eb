"""The installed package as a C++ dependency (cmake/package.cmake, docs/cpp.md).

examples/minimal/main.cc is built against the installed wheel twice, the two ways docs/cpp.md
shows: CMake's `find_package(cosyfast)` with `-Dcosyfast_DIR=$(cosyfast info --cmake-dir)`, and
one compiler line from cosyfast.pc. Each program runs a tiny bundle and must print the tokens the
Python CPU engine gives for the same input and seed. Also: the CLI prints the directories, the
package files hold no absolute path (the wheel is installed anywhere), cosyfast-host uses the
library instead of its own copy of the engine, and docs/cpp.md quotes the example as it is.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cosyfast
from cosyfast import _paths

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal"
EOP = 151646  # <|endofprompt|>, required in CosyVoice3 texts
TEXT_IDS = {"cosyvoice2": [9906, 1879, 11, 1246, 374], "cosyvoice3": [EOP, 1000, 2000, 30000, 77, 5]}
EXAMPLE_OPTIONS = dict(seed=7, max_len=40)  # what main.cc sets
KINDS = tuple(TEXT_IDS)
BUILD_TIMEOUT_S = 180


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosyfast.cli", *args], capture_output=True, text=True, timeout=60)


def _build(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=cwd)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def _cxx() -> str:
    exe = shutil.which("c++") or shutil.which("g++")
    if exe is None:
        pytest.skip("no C++ compiler on PATH")
    return exe


def run_minimal(exe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)


def minimal_tokens(exe: Path, bundle: Path, kind: str) -> list[int]:
    proc = run_minimal(exe, str(bundle), *map(str, TEXT_IDS[kind]))
    assert proc.returncode == 0, proc.stderr
    return [int(t) for t in proc.stdout.split()]


def parse_pc(path: Path) -> tuple[list[str], list[str]]:
    """Cflags and Libs of a .pc file, its variables (and ${pcfiledir}) expanded as pkg-config does:
    the build's fallback where pkg-config is not installed."""
    variables = {"pcfiledir": str(path.parent)}
    fields: dict[str, str] = {}

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: variables[m[1]], value)

    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"(\w+)\s*=\s*(.*)", line):
            variables[m[1]] = expand(m[2])
        elif m := re.fullmatch(r"([\w.]+)\s*:\s*(.*)", line):
            fields[m[1]] = expand(m[2])
    return shlex.split(fields.get("Cflags", "")), shlex.split(fields.get("Libs", ""))


def pkg_config_flags(pc_dir: Path) -> tuple[list[str], list[str]] | None:
    """`pkg-config --cflags` and `--libs cosyfast` through PKG_CONFIG_PATH, or None without pkg-config."""
    exe = shutil.which("pkg-config")
    if exe is None:
        return None
    env = dict(os.environ, PKG_CONFIG_PATH=str(pc_dir))
    out = [subprocess.run([exe, flag, "cosyfast"], capture_output=True, text=True, timeout=30, env=env, check=True).stdout
           for flag in ("--cflags", "--libs")]
    return shlex.split(out[0]), shlex.split(out[1])


@pytest.fixture(scope="module")
def expected(tiny_dirs):
    """The Python CPU engine's tokens for main.cc's request, by kind."""
    out = {}
    for kind, d in tiny_dirs.items():
        with cosyfast.load(d, engine="cpu") as model:
            out[kind] = model.generate(TEXT_IDS[kind], **EXAMPLE_OPTIONS)
        assert len(out[kind]) > 0
    return out


@pytest.fixture(scope="module")
def cmake_minimal(tmp_path_factory) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake on PATH (pip install cmake)")
    _cxx()
    cmake_dir = _cli("info", "--cmake-dir").stdout.strip()
    build = tmp_path_factory.mktemp("minimal-cmake")
    _build([cmake, "-S", str(EXAMPLE), "-B", str(build), f"-Dcosyfast_DIR={cmake_dir}", "-DCMAKE_BUILD_TYPE=Release"])
    _build([cmake, "--build", str(build)])
    return build / "minimal"


@pytest.fixture(scope="module")
def pkgconfig_minimal(tmp_path_factory) -> Path:
    pc_dir = Path(_cli("info", "--pkg-config-dir").stdout.strip())
    cflags, libs = pkg_config_flags(pc_dir) or parse_pc(pc_dir / "cosyfast.pc")
    exe = tmp_path_factory.mktemp("minimal-pkgconfig") / "minimal"
    _build([_cxx(), "-std=c++17", "-O1", *cflags, str(EXAMPLE / "main.cc"), "-o", str(exe), *libs])
    return exe


# --- finding the package -----------------------------------------------------------------------

def test_cli_prints_the_directories():
    for flag, expected_dir, marker in [("--cmake-dir", _paths.cmake_dir(), "cosyfastConfig.cmake"),
                                       ("--pkg-config-dir", _paths.pkgconfig_dir(), "cosyfast.pc")]:
        proc = _cli("info", flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{expected_dir}\n"  # just the path, for $(...)
        assert (expected_dir / marker).is_file()
    assert (_paths.include_dir() / "cosyfast" / "cosyfast.hpp").is_file()
    assert (_paths.library_dir() / "libcosyfast.so").is_file()
    assert _cli("info", "--json", "--cmake-dir").returncode == 2  # one thing at a time


def test_package_files_are_relocatable():
    """No file names the directory the wheel was installed to: each finds the others relative to
    itself (the wheel's prefix is not known when it is built)."""
    package_dir = _paths.library_dir().parent
    for path in [*_paths.cmake_dir().iterdir(), _paths.pkgconfig_dir() / "cosyfast.pc"]:
        text = path.read_text()
        assert str(package_dir) not in text and str(package_dir.parent) not in text, path
    assert "prefix=${pcfiledir}/../.." in (_paths.pkgconfig_dir() / "cosyfast.pc").read_text()


def test_pc_fallback_reads_what_pkg_config_reads():
    """The fallback parser of the pkg-config build below gives pkg-config's own flags."""
    pc_dir = _paths.pkgconfig_dir()
    flags = pkg_config_flags(pc_dir)
    if flags is None:
        pytest.skip("no pkg-config on PATH (the pkg-config build uses the fallback parser)")
    assert parse_pc(pc_dir / "cosyfast.pc") == flags


def test_host_program_links_the_library():
    """The wheel carries the engine once: the installed cosyfast-host loads libcosyfast.so through
    its run path, and the library exports the C API only."""
    readelf, nm = shutil.which("readelf"), shutil.which("nm")
    if readelf is None or nm is None:
        pytest.skip("no readelf / nm on PATH")
    lib = _paths.library_dir() / "libcosyfast.so"
    host = lib.parent.parent / "bin" / "cosyfast-host"
    dynamic = subprocess.run([readelf, "-d", str(host)], capture_output=True, text=True, check=True).stdout
    assert "Shared library: [libcosyfast.so]" in dynamic
    assert re.search(r"\((RUNPATH|RPATH)\).*\[\$ORIGIN/\.\./lib\]", dynamic), dynamic
    symbols = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in symbols.splitlines() if line.strip()}
    linker_defined = {"_init", "_fini", "_edata", "_end", "__bss_start"}
    assert "cosyfast_model_create" in names
    assert {n for n in names - linker_defined if not n.startswith("cosyfast_")} == set()


# --- the example, built both ways --------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_cmake_example_matches_python(cmake_minimal, bundles, expected, kind):
    assert minimal_tokens(cmake_minimal, bundles[kind], kind) == expected[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_pkg_config_example_matches_python(pkgconfig_minimal, bundles, expected, kind):
    assert minimal_tokens(pkgconfig_minimal, bundles[kind], kind) == expected[kind]


def test_example_reports_errors(pkgconfig_minimal, tmp_path):
    proc = run_minimal(pkgconfig_minimal, str(tmp_path / "nowhere"), "1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("minimal: ") and "is not a cosyfast CPU bundle" in proc.stderr
    assert run_minimal(pkgconfig_minimal, str(tmp_path)).returncode == 2  # no text ids: usage


def test_docs_show_the_example():
    """docs/cpp.md quotes main.cc whole and the lines of its CMakeLists.txt that use the package."""
    docs = (EXAMPLE.parents[1] / "docs" / "cpp.md").read_text()
    assert f"```cpp\n{(EXAMPLE / 'main.cc').read_text()}```" in docs
    cmake_lines = [line for line in (EXAMPLE / "CMakeLists.txt").read_text().splitlines() if "cosyfast" in line
                   and not line.startswith("#")]
    assert len(cmake_lines) == 2 and all(line in docs for line in cmake_lines)
