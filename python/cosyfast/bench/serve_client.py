"""One of the serve bench's client processes, run as a script (httpx only, so that it starts fast).

Protocol on stdin/stdout, so that the parent can start every process's requests together:
  stdin line 1: {"url": ..., "bodies": [...]}     -> the process opens one connection per body and
                                                     warms each with a 1-token request
  stdout line:  "ready"
  stdin line 2: anything ("go")                   -> every request at once
  stdout line:  {"start": t, "end": t, "arrivals": [[s, ...], ...], "cpu_s": c}
where t are time.perf_counter() values (CLOCK_MONOTONIC, one clock for every process of the
machine), arrivals[i] the seconds from request i's own send to each of its tokens, and cpu_s this
process's CPU time (user + system) over the timed requests."""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import httpx


async def _one(client: httpx.AsyncClient, body: dict[str, Any]) -> list[float]:
    start = time.perf_counter()
    times: list[float] = []
    async with client.stream("POST", "/v1/speech_tokens", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())!r}")
        async for line in r.aiter_lines():
            msg = json.loads(line) if line else {}
            if "error" in msg:
                raise RuntimeError(f"stream failed: {msg['error']}")
            n = len(msg.get("tokens", ()))
            if n:
                times.extend([time.perf_counter() - start] * n)
    return times


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    # One client (one connection) per request: a shared pool's bookkeeping grows with the number
    # of requests in flight (httpcore), which would time the client rather than the server.
    clients = [httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=1))
               for _ in bodies]
    try:
        # Untimed: a 1-token request per connection, so that the timed run finds its connections
        # open and the client warm, as a long-running client would.
        await asyncio.gather(*(_one(c, b | {"min_len": 1, "max_len": 1}) for c, b in zip(clients, bodies)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0, start = _cpu(), time.perf_counter()
        arrivals = await asyncio.gather(*(_one(c, b) for c, b in zip(clients, bodies)))
        end = time.perf_counter()
        return {"start": start, "end": end, "arrivals": arrivals, "cpu_s": _cpu() - cpu0}
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


if __name__ == "__main__":
    job = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_run(job["url"], job["bodies"]))), flush=True)
