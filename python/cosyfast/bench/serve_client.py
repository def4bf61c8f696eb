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
    """Child process: every request at once; (wall seconds, seconds from the start to each token)."""
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

    async def run() -> tuple[float, list[list[float]]]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            # Untimed: a 1-token request per connection, so that the timed run finds its
            # connections open and the client warm, as a long-running client would.
            warm = [b | {"min_len": 1, "max_len": 1} for b in bodies]
            await asyncio.gather(*(one(client, b, time.perf_counter()) for b in warm))
            start = time.perf_counter()
            arrivals = await asyncio.gather(*(one(client, b, start) for b in bodies))
            return time.perf_counter() - start, arrivals

    return asyncio.run(run())

if __name__ == "__main__":
    print(json.dumps(_client_run(sys.argv[1], json.loads(sys.stdin.read()))))
