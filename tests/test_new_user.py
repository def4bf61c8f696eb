"""What a new user trips on (issue 20, item 5) and the host programs' edges (issue 19): the host
programs on PATH, `cosyfast bench --plot` without matplotlib, `cosyfast demo --engine turbomind`
without the engine, `cosyfast.load(BUNDLE_DIR)`, install commands in the docs that work from a
checkout; the host programs fail when their output cannot be written, and cosyfast-load refuses a
requests file that is not a regular file of a sane size before reading it.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import cosyfast
from cosyfast import _core
from cosyfast.bundle import host_program, load_program

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
HOST_REQUEST = ("--text", "1,2,3", "--max-len", "3")
LOAD_REQUEST = ("--num-requests", "2", "--max-len", "3", "--warmup", "0", "--text-len", "4",
                "--prompt-text-len", "2", "--prompt-speech-len", "4")


def _extras() -> set[str]:
    return set(importlib.metadata.metadata("cosyfast").get_all("Provides-Extra") or [])


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=ROOT.parent)


# --- the host programs on PATH ------------------------------------------------------------------

@pytest.mark.parametrize("program", ["cosyfast-host", "cosyfast-load"])
def test_host_programs_are_commands(program):
    """pip install puts cosyfast-host and cosyfast-load beside `cosyfast` (console entry points that
    run the programs installed in cosyfast/bin/); `cosyfast host|load` run them too."""
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
               if e.dist is not None and e.dist.name == "cosyfast"}
    assert program in scripts, sorted(scripts)
    beside = shutil.which("cosyfast")
    script = Path(beside).parent / program if beside else None
    if script is not None and script.exists():  # the command this install put on PATH
        run = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    else:  # installed elsewhere (a --user or --target install): the entry point itself
        module, func = scripts[program].split(":")
        run = _python(f"import sys; sys.argv = ['{program}', '--help']; import {module}; sys.exit({module}.{func}())")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: {program} BUNDLE_DIR"), run.stdout[:200]
    sub = _python("import sys; from cosyfast.cli import main; sys.exit(main(sys.argv[1:]))",
                  program.removeprefix("cosyfast-"), "--help")
    assert sub.returncode == 0 and sub.stdout.startswith(f"usage: {program}"), sub.stderr


# --- bench --plot and demo --engine turbomind: one sentence, before any work ----------------------

def test_bench_plot_without_matplotlib_says_so_before_running(tmp_path):
    out = tmp_path / "bench"
    run = _python("import sys; sys.modules['matplotlib'] = None\n"
                  "from cosyfast.cli import main; sys.exit(main(sys.argv[1:]))",
                  "bench", "--paths", "cosyfast", "--engine", "cpu", "--concurrency", "1", "--new-tokens", "4",
                  "--out", str(out), "--plot")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr and "matplotlib" in run.stderr and ".[plot]" in run.stderr, run.stderr
    assert not out.exists()  # nothing ran
    plot = [r for r in importlib.metadata.requires("cosyfast") or [] if 'extra == "plot"' in r]
    assert any(r.startswith("matplotlib") for r in plot), plot


@pytest.mark.skipif(_core.build_info()["with_turbomind"], reason="this build has the TurboMind engine")
def test_demo_on_turbomind_without_the_engine_is_one_sentence(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cosyfast.cli", "demo", "--engine", "turbomind"], capture_output=True,
                         text=True, timeout=120, env=dict(ENV, COSYFAST_CACHE=str(tmp_path)))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("cosyfast: this cosyfast was built without the TurboMind engine"), run.stderr
    assert run.stdout == ""  # no checkpoint built first


# --- cosyfast.load(BUNDLE_DIR) -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosyvoice2", "cosyvoice3"])
def test_load_takes_a_bundle_directory(bundles, tiny_dirs, kind):
    request = dict(text_ids=[5, 6, 7, 8], prompt_text_ids=[1, 2] + ([151646] if kind == "cosyvoice3" else []),
                   prompt_speech_tokens=[3, 4, 5], seed=11, max_len=12)
    with cosyfast.load(bundles[kind], engine="cpu") as from_bundle, cosyfast.load(tiny_dirs[kind], engine="cpu") as m:
        assert from_bundle.kind == kind
        assert from_bundle.generate(**request) == m.generate(**request)


def test_load_of_a_broken_bundle_names_the_problem(bundles, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(bundles["cosyvoice2"], broken)
    (broken / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(cosyfast.CheckpointError, match=r"the bundle lacks 'layers\.0\."):
        cosyfast.load(broken, engine="cpu")


# --- docs: install commands that work from a checkout -------------------------------------------

def test_docs_install_from_a_checkout():
    """The package is not on an index: `pip install cosyfast[...]` fails for a reader; `pip install
    ".[extra]"` works, for extras pyproject.toml declares."""
    extras = _extras()
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "packaging" / "README.md"]
    for doc in docs:
        text = doc.read_text()
        bad = re.findall(r"pip install [\"']?cosyfast\b[^\s`\"']*", text)
        assert not bad, f"{doc.name}: {bad} (the package is installed from a checkout: pip install \".[extra]\")"
        for group in re.findall(r"pip install [^`\n]*?[\"']\.\[([a-z,]+)\][\"']", text):
            assert set(group.split(",")) <= extras, f"{doc.name}: unknown extra in .[{group}]"


def test_readme_commands_build_in_one_environment():
    """The README's two commands install pyproject.toml's build requirements and build without
    isolation, so the second reuses the first's build tree instead of compiling everything again."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("pip install torch==")]
    assert len(commands) >= 2 and all("-r packaging/build-requirements.txt" in c and "--no-build-isolation" in c
                                      for c in commands[:2]), commands
    listed = {re.split(r"[<>=!~ ]", line)[0].lower() for line in
              (ROOT / "packaging" / "build-requirements.txt").read_text().splitlines() if line and line[0] != "#"}
    build_system = re.search(r"^requires = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert build_system is not None
    required = {re.split(r"[<>=!~ ]", r.strip().strip('"'))[0].lower() for r in build_system.group(1).split(",")}
    assert required <= listed, required - listed


# --- the host programs' output and the requests file ----------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("program", ["host", "load"])
def test_unwritable_output_fails(bundles, program):
    """Output to a full device: exit status 1 and the reason, not a silent 0."""
    exe, request = (host_program(), HOST_REQUEST) if program == "host" else (load_program(), LOAD_REQUEST)
    for args in ((str(bundles["cosyvoice2"]), *request), ("--help",)):
        with open("/dev/full", "w") as full:
            run = subprocess.run([str(exe), *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, env=ENV)
        assert run.returncode == 1, (args, run.returncode, run.stderr)
        assert run.stderr == f"cosyfast-{program}: error: writing to stdout failed: No space left on device\n"


def _load_error(bundle: Path, requests: object) -> str:
    run = subprocess.run([str(load_program()), str(bundle), "--requests", str(requests)], capture_output=True,
                         text=True, timeout=30, env=ENV)
    assert run.returncode == 1 and run.stdout == "", (run.returncode, run.stdout, run.stderr)
    return run.stderr


def test_requests_file_must_be_a_regular_file_of_sane_size(bundles, tmp_path):
    """Refused before a byte is read: a device that never ends (/dev/zero), a FIFO nobody writes (a
    read would block forever), a directory, a file over 64 MiB (sparse here: nothing is written)."""
    b = bundles["cosyvoice2"]
    prefix = "cosyfast-load: error: the requests file "
    assert _load_error(b, tmp_path) == f"{prefix}{tmp_path} is a directory; expected a regular file\n"
    if os.path.exists("/dev/zero"):
        assert _load_error(b, "/dev/zero") == f"{prefix}/dev/zero is a device; expected a regular file\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert _load_error(b, fifo) == f"{prefix}{fifo} is a FIFO; expected a regular file\n"
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)
    assert _load_error(b, big) == (f"{prefix}{big} holds {(64 << 20) + 1} bytes, more than the limit of "
                                   f"{64 << 20} (64 MiB)\n")
