"""One of the serve bench's client processes, run as a script (no torch to import, so that it starts fast).

Protocol on stdin/stdout, so that the parent can start every process's requests together:
  stdin line 1: {"url": ..., "bodies": [...]}     -> the process opens one connection per body and
                                                     warms each with a 1-token request
  stdout line:  "ready"
  stdin line 2: anything ("go")                   -> every request at once
  stdout line:  {"start": t, "end": t, "sends": [t, ...], "arrivals": [[s, ...], ...], "cpu_s": c}
where t are time.perf_counter() values (CLOCK_MONOTONIC, one clock for every process of the
machine), sends[i] when request i was sent, arrivals[i] the seconds from its send to each of its
tokens, and cpu_s this process's CPU time (user + system) over the timed requests.

HTTP/1.1 over asyncio streams, the responses parsed by httptools (the C parser uvicorn uses), on
uvloop where it is installed: a load generator should time the server, and a general client's
own work per request (httpx: about half a millisecond to start each streamed response on the
2-core CI machine) came out as tens of milliseconds of first-token latency at 64 streams per
client process.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httptools


class _Response:
    """httptools' callbacks for one streamed NDJSON answer: each token timed when its line arrives."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.times: list[float] = []
        self.pending = b""  # a line's start, until its newline arrives
        self.status = 0
        self.error: Any = None  # a stream's {"error": ...} line (httptools would wrap a raise here)
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self.pending += data
        if self.status != 200:
            return  # an error answer: kept whole for the message
        *lines, self.pending = self.pending.split(b"\n")
        now = time.perf_counter()
        for line in lines:
            msg = json.loads(line) if line else {}
            if "error" in msg:
                self.error = msg["error"]
            self.times.extend([now - self.start] * len(msg.get("tokens", ())))

    def on_message_complete(self) -> None:
        self.done = True


class _Connection:
    """One keep-alive connection that sends one request at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (f"POST /v1/speech_tokens HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Content-Type: application/json\r\nAccept: application/x-ndjson\r\n")
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, body: dict[str, Any]) -> tuple[float, list[float]]:
        """(when it was sent, the seconds from then to each token)"""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        data = json.dumps(body, separators=(",", ":")).encode()
        start = time.perf_counter()
        writer.write(f"{self.head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        response = _Response(start)
        while not response.done:
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise RuntimeError("the server closed the connection mid-answer")
            response.parser.feed_data(chunk)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.pending[:2000]!r}")
        if response.error is not None:
            raise RuntimeError(f"stream failed: {response.error}")
        return start, response.times

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    # One connection per request, as separate clients would have.
    connections = [_Connection(url) for _ in bodies]
    try:
        # Untimed: a 1-token request per connection, so that the timed run finds its connections
        # open and the client warm, as a long-running client would.
        await asyncio.gather(*(c.request(b | {"min_len": 1, "max_len": 1}) for c, b in zip(connections, bodies)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0, start = _cpu(), time.perf_counter()
        answers = await asyncio.gather(*(c.request(b) for c, b in zip(connections, bodies)))
        end = time.perf_counter()
        return {"start": start, "end": end, "sends": [s for s, _ in answers], "arrivals": [a for _, a in answers],
                "cpu_s": _cpu() - cpu0}
    finally:
        for c in connections:
            c.close()


def write_result(result: dict[str, Any]) -> None:
    """The result line, whole, however the pipe behaves. After uvloop has run, a write to a full
    pipe can return short (65536 bytes) even on a blocking descriptor, and Python's print then
    lost the rest without an error: the parent, which reads the children one after another, got a
    cut line (the GPU machine, 64 streams over 4 client processes; reproduced on the CPU). So the
    bytes go out through os.write until every one is written."""
    data = (json.dumps(result) + "\n").encode()
    fd = sys.stdout.fileno()
    os.set_blocking(fd, True)
    sys.stdout.flush()  # anything printed before goes first, and blocking
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    job = json.loads(sys.stdin.readline())
    try:
        import uvloop
        result = uvloop.run(_run(job["url"], job["bodies"]))
    except ImportError:
        result = asyncio.run(_run(job["url"], job["bodies"]))
    write_result(result)
