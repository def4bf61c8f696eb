"""The serve bench's client (cosyfast/bench/serve_client.py): its HTTP parsing, on responses cut at
every byte boundary, since the bench's token counts and timings rest on it."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("httptools")
from cosyfast.bench.serve_client import _Response  # noqa: E402


def _chunked(lines: list[bytes], cut: int) -> bytes:
    """An NDJSON body in chunks of `cut` bytes (a line may span chunks), chunk-encoded."""
    body = b"".join(lines)
    parts = [body[i:i + cut] for i in range(0, len(body), cut)]
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


@pytest.mark.parametrize("cut", [1, 3, 7, 64])
@pytest.mark.parametrize("feed", [1, 5, 1000])
def test_tokens_counted_whatever_the_chunking(cut: int, feed: int) -> None:
    lines = [json.dumps({"tokens": list(range(n))}).encode() + b"\n" for n in (1, 4, 2)]
    lines.append(json.dumps({"finish_reason": "max_len", "num_tokens": 7}).encode() + b"\n")
    raw = _chunked(lines, cut)
    r = _Response(start=0.0)
    for i in range(0, len(raw), feed):
        r.parser.feed_data(raw[i:i + feed])
    assert r.done and r.status == 200
    assert len(r.times) == 7 and r.pending == b""


def test_an_error_line_in_the_stream_is_kept() -> None:
    raw = _chunked([b'{"tokens": [1]}\n', b'{"error": {"field": null, "message": "the session failed"}}\n'], 1000)
    r = _Response(start=0.0)
    r.parser.feed_data(raw)
    assert r.done and r.error == {"field": None, "message": "the session failed"} and len(r.times) == 1


def test_an_error_answer_is_kept_whole_for_the_message() -> None:
    body = b'{"error": {"field": "top_k", "message": "top_k must be >= 1"}}'
    raw = b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    r = _Response(start=0.0)
    r.parser.feed_data(raw)
    assert r.done and r.status == 422 and r.pending == body and r.times == []


@pytest.mark.parametrize("after", ["a non-blocking stdout", "uvloop"])
def test_a_result_larger_than_the_pipe_arrives_whole(after: str) -> None:
    """The GPU machine's 64- and 256-stream runs: the parent reads the client processes one after
    another, so a child's result line (over 64 KiB) meets a full pipe; after uvloop had run (or
    with a non-blocking stdout) the line arrived cut at 65536 bytes, exit status 0."""
    import subprocess
    import sys
    import time

    if after == "uvloop":
        pytest.importorskip("uvloop")
        before = "import asyncio, uvloop\nuvloop.run(asyncio.sleep(0.01))\n"
    else:
        before = "os.set_blocking(sys.stdout.fileno(), False)\n"
    child_code = ("import os, sys\n"
                  "from cosyfast.bench.serve_client import write_result\n"
                  + before +
                  "print('writing', file=sys.stderr, flush=True)\n"
                  "write_result({'arrivals': [[0.123456789] * 500] * 64})\n")
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stderr is not None and child.stderr.readline() == b"writing\n"
    time.sleep(0.5)  # the pipe fills while the parent reads another child
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()[-2000:]
    assert len(out) > 65536 and out.endswith(b"]]}\n") and out.count(b"\n") == 1, (len(out), out[-40:])
    assert json.loads(out)["arrivals"][63][499] == 0.123456789
