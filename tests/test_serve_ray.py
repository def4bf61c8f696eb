"""The Ray Serve deployment in a local Ray instance (one CPU replica), queried through Serve's
HTTP proxy on loopback. Bounded: a watchdog ends the run if Ray hangs."""
from __future__ import annotations

import faulthandler
import json
import socket
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray Serve test needs the ray extra: pip install '.[ray]'")
serve = pytest.importorskip("ray.serve", reason="the Ray Serve test needs ray[serve]: pip install '.[ray]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need the serve extra: pip install '.[serve]'")
from httpx_ws import connect_ws  # noqa: E402

import cosyfast  # noqa: E402
from cosyfast.serve.ray import app, build  # noqa: E402

BUDGET_S = 300  # Ray's start, the deployment and the queries together; a hang beyond it fails the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_parses_cli_args() -> None:
    with pytest.raises(ValueError, match="give the model"):
        build({"engine": "cpu"})
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        build({"model": "x", "min_replicas": "3", "max_replicas": "2"})


def test_ray_serve_deployment(tiny_cv2_dir: Path) -> None:
    body = dict(text_ids=[5, 6, 7, 8], prompt_speech_tokens=[1, 2, 3], seed=11, max_len=80)
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        ref = m.generate(**body)
    faulthandler.dump_traceback_later(BUDGET_S, exit=True)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app(str(tiny_cv2_dir), engine="cpu", max_sessions=8), name="cosyfast", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as c:
            deadline = time.monotonic() + 60
            while (health := c.get("/health")).status_code != 200:  # the proxy may lag the replica
                assert time.monotonic() < deadline, health.text
                time.sleep(0.5)
            assert health.json()["engine"] == "cpu" and health.json()["max_sessions"] == 8
            with c.stream("POST", "/v1/speech_tokens", json=body) as r:
                assert r.status_code == 200
                msgs = [json.loads(line) for line in r.iter_lines() if line]
            assert [t for msg in msgs[:-1] for t in msg["tokens"]] == ref
            assert msgs[-1] == {"finish_reason": "max_len", "num_tokens": 80}
            bad = c.post("/v1/speech_tokens", json={**body, "top_k": 0})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "top_k"
            assert "cosyfast_tokens_total 80.0" in c.get("/metrics").text
        with connect_ws(f"ws://127.0.0.1:{port}/v1/speech_tokens/bistream") as ws:
            ws.send_json({"prompt_speech_tokens": [1, 2, 3], "seed": 3, "max_len": 40})
            ws.send_json({"text_ids": [5, 6, 7, 8, 9, 10], "end": True})
            while "finish_reason" not in (msg := ws.receive_json()):
                assert "tokens" in msg or "need_text" in msg, msg
            assert msg["num_tokens"] > 0
    finally:
        serve.shutdown()
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()
