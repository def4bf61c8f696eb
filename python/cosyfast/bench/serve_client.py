"""The serve bench's clients, run as a script in a child process: reads the request bodies (JSON)
on stdin, sends them all at once to URL, prints [wall seconds, per request the seconds from the
start to each token's arrival]. Standalone (httpx only), so that it starts fast."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


def _client_run(url: str, bodies: list[dict[str, Any]]) -> tuple[float, list[list[float]]]:
    """Child process: every request at once; seconds from the start to each token's arrival."""
    async def one(client: httpx.AsyncClient, b: dict[str, Any], start: float) -> list[float]:
        times: list[float] = []
        async with client.stream("POST", "/v1/speech_tokens", json=b) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()!r}")
            async for line in r.aiter_lines():
                msg = json.loads(line) if line else {}
                if "error" in msg:
                    raise RuntimeError(f"stream failed: {msg['error']}")
                times.extend([time.perf_counter() - start] * len(msg.get("tokens", ())))
        return times

    async def run() -> list[list[float]]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            start = time.perf_counter()
            return await asyncio.gather(*(one(client, b, start) for b in bodies))

    t0 = time.perf_counter()
    arrivals = asyncio.run(run())
    return time.perf_counter() - t0, arrivals


if __name__ == "__main__":
    print(json.dumps(_client_run(sys.argv[1], json.loads(sys.stdin.read()))))
