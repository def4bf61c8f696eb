"""Every command in docs/serve.md, as written: the install line is the one CI runs (its extra must
exist and be installed), `cosyfast serve &` starts the demo server on port 8000, the curl lines and
the Python client run against it, and the lines that need a real model, a GPU or a Ray cluster
(each says so) have their arguments checked by the same parsers the real run uses."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need the serve extra: pip install '.[serve]'")
pytest.importorskip("tokenizers", reason="the demo model's text route needs the text extra")
DOC = Path(__file__).resolve().parents[1] / "docs" / "serve.md"
NOT_RUN = ("# needs the model and a GPU", "# needs a Ray cluster and the model")


def _blocks() -> list[tuple[str, str, str]]:
    """(language, code, the line before the fence) of every fenced block."""
    text = DOC.read_text()
    out = []
    for m in re.finditer(r"(?m)^([^\n]*)\n[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.S):
        out.append((m[2], "\n".join(line.strip() if m[2] == "bash" else line for line in m[3].splitlines()), m[1]))
    return out


def _commands(code: str) -> list[str]:
    return [c.strip() for c in code.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_every_command_in_the_serve_doc(tmp_path: Path) -> None:
    from cosyfast.serve.ray import build
    from cosyfast.serve.server import parser

    if not _port_free(8000):
        pytest.skip("port 8000 is in use here; the doc's commands use it")
    blocks = _blocks()
    bash = [c for lang, code, _ in blocks if lang == "bash" for c in _commands(code)]
    python = [code for lang, code, before in blocks if lang == "python" and "not run" not in before]
    assert bash[0] == 'pip install ".[serve]"' and "cosyfast serve &" in bash and python
    env = dict(os.environ, COSYFAST_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    server: subprocess.Popen | None = None
    ran = 0
    try:
        for command in bash:
            if command.startswith("pip install"):  # CI's own install ran it; here: the extra is in place
                extra = re.fullmatch(r'pip install "\.\[(\w+)\]"', command)
                assert extra, command
                required = importlib.metadata.requires("cosyfast") or []
                wanted = [r for r in required if f'extra == "{extra[1]}"' in r]
                assert wanted, f"no extra {extra[1]!r} in cosyfast's metadata"
                continue
            if command.endswith(NOT_RUN):  # the same parsers a real run uses
                args = shlex.split(command.split(" #")[0])
                if args[:2] == ["cosyfast", "serve"]:
                    parsed = parser().parse_args(args[2:])
                    assert parsed.model and parsed.engine == "turbomind"
                else:
                    assert args[:2] == ["serve", "run"] and args[3] == "cosyfast.serve.ray:build", args
                    build(dict(a.split("=", 1) for a in args[4:]))
                continue
            if command == "cosyfast serve &":
                server = subprocess.Popen(shlex.split(command[:-1]), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                deadline = time.monotonic() + 120
                while True:
                    assert server.poll() is None, server.communicate()[0]
                    try:
                        if httpx.get("http://127.0.0.1:8000/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, "cosyfast serve did not start"
                    time.sleep(0.2)
                continue
            assert command.startswith("curl "), f"a command this test does not know how to run: {command}"
            if shutil.which("curl") is None:  # the same requests go through the Python client below
                continue
            out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60, check=True).stdout
            last = json.loads(out.strip().splitlines()[-1])
            assert last.get("status") == "ok" or last.get("finish_reason") in ("stop_token", "max_len"), out
            ran += 1
        assert server is not None and ran == (3 if shutil.which("curl") else 0)
        for code in python:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert "done:" in done.stdout and "bistream done:" in done.stdout, done.stdout
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "demo model" in output and "text by" in output
