"""`cosyfast serve` against hostile clients: every bad WebSocket frame ends its session at once
with a close frame that says why, bodies and messages are bounded, JSON nesting is bounded, and
after a thousand such clients nothing is left live and the server still answers."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need the serve extra: pip install '.[serve]'")
pytest.importorskip("fastapi", reason="the serve tests need the serve extra: pip install '.[serve]'")
from httpx_ws import WebSocketDisconnect, aconnect_ws, connect_ws  # noqa: E402

import cosyfast  # noqa: E402
from cosyfast.serve import BackgroundServer, Service  # noqa: E402

LIMIT = 8192  # max_body_bytes of the servers here
FIRST = dict(prompt_text_ids=[3, 4, 5], prompt_speech_tokens=list(range(20, 52)), seed=9, max_len=300)
DEEP = '{"text_ids": ' + "[" * 3000 + "]" * 3000 + "}"  # 6 kB, under LIMIT


@pytest.fixture(scope="module")
def model(tiny_cv2_dir: Path) -> Iterator[cosyfast.Model]:
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        yield m


@pytest.fixture
def server(model: cosyfast.Model) -> Iterator[BackgroundServer]:
    s = BackgroundServer(Service(model, max_sessions=64, max_body_bytes=LIMIT))
    s.__enter__()
    yield s
    s.stop()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _ws_url(server: BackgroundServer) -> str:
    return server.url.replace("http", "ws") + "/v1/speech_tokens/bistream"


# (what the client sends after a valid first message, the close code, a phrase of the reason)
BAD_FRAMES: dict[str, tuple[Callable[[Any], None], int, str]] = {
    "binary": (lambda ws: ws.send_bytes(b'{"text_ids": [1]}'), 1003, "binary"),
    "too large": (lambda ws: ws.send_text(json.dumps({"text_ids": [1] * LIMIT})), 1009, ""),
    "too deep": (lambda ws: ws.send_text(DEEP), 1007, "nested too deeply"),
    "not json": (lambda ws: ws.send_text("{text_ids"), 1007, "not JSON"),
    "not an object": (lambda ws: ws.send_text("[1, 2]"), 1007, "JSON object"),
    "unknown field": (lambda ws: ws.send_text('{"prompt_text_ids": [1]}'), 1008, "prompt_text_ids"),
    "wrong type": (lambda ws: ws.send_text('{"text_ids": "hello"}'), 1008, "text_ids"),
    "bad id": (lambda ws: ws.send_text('{"text_ids": [1000000000]}'), 1008, "text_ids"),
    "after the end": (lambda ws: (ws.send_text('{"end": true}'), ws.send_text('{"text_ids": [1]}')), 1008,
                      "after"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_closes_and_frees_the_session(server: BackgroundServer, model: cosyfast.Model, case: str) -> None:
    send, code, phrase = BAD_FRAMES[case]
    with connect_ws(_ws_url(server)) as ws:
        ws.send_json(FIRST)
        assert ws.receive_json() == {"need_text": True}  # the session is live and waits for text
        send(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:  # tokens or the error message may come first; then the close frame
                msg = ws.receive_json(timeout=10)
                assert "tokens" in msg or "error" in msg or "need_text" in msg, msg
        assert closed.value.code == code, closed.value
        assert phrase in closed.value.reason, closed.value.reason
    wait_for(lambda: model.live_sessions == 0 and server.service.admitted == 0, "the session is freed")


@pytest.mark.parametrize("first, code", [
    (b"\x00binary", 1003),
    (DEEP, 1007),
    ("{not json", 1007),
    (json.dumps({**FIRST, "text_ids": [1]}), 1008),  # no text_ids in the first message of a bistream
])
def test_bad_first_frame_is_refused(server: BackgroundServer, model: cosyfast.Model, first: Any, code: int) -> None:
    with connect_ws(_ws_url(server)) as ws:
        ws.send_bytes(first) if isinstance(first, bytes) else ws.send_text(first)
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                assert "error" in ws.receive_json(timeout=10)
        assert closed.value.code == code and closed.value.reason
    assert model.live_sessions == 0 and server.service.admitted == 0


def test_body_limit_is_413_before_parsing(server: BackgroundServer) -> None:
    big = json.dumps({"text_ids": [1] * LIMIT}).encode()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/speech_tokens", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit of 8192" in r.json()["error"]["message"]
        # chunked, no Content-Length: refused once the limit is passed, not after the whole body
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            for _ in range(10_000):  # 10 MB if it were all read
                sent += 1
                yield b" " * 1000
        r = c.post("/v1/speech_tokens", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["field"] is None
        assert sent < 10_000
        ok = c.post("/v1/speech_tokens", json={"text_ids": [1, 2, 3], "stream": False, "max_len": 5})
        assert ok.status_code == 200 and len(ok.json()["tokens"]) <= 5


def test_text_pending_per_session_is_bounded(tiny_cv2_dir: Path) -> None:
    """A bistream holds at most max_session_len text ids: more closes the connection (1009)."""
    with cosyfast.load(tiny_cv2_dir, engine="cpu", max_session_len=256) as small:
        with BackgroundServer(Service(small, max_body_bytes=LIMIT)) as url:
            with connect_ws(url.replace("http", "ws") + "/v1/speech_tokens/bistream") as ws:
                ws.send_json(FIRST)
                assert ws.receive_json() == {"need_text": True}
                with pytest.raises(WebSocketDisconnect) as closed:
                    for _ in range(10):
                        try:
                            ws.send_json({"text_ids": [7] * 100})
                        except Exception:  # noqa: BLE001 - the server closed already: read why below
                            break
                    while True:
                        ws.receive_json(timeout=10)
                assert closed.value.code == 1009 and "session limit" in closed.value.reason
            wait_for(lambda: small.live_sessions == 0, "the session is freed")


async def _hostile_ws(url: str, client: Any, i: int) -> None:
    case = list(BAD_FRAMES.values())[i % len(BAD_FRAMES)]
    try:
        async with aconnect_ws(url, client) as ws:
            if i % 3:  # most start a session first
                await ws.send_json(FIRST)
            if i % 5 == 0:
                return  # and some just leave
            await ws.send_bytes(b"\x01") if case[1] == 1003 else await ws.send_text(
                DEEP if case[1] == 1007 else '{"text_ids": "x"}')
            while True:
                await ws.receive_json(timeout=10)
    except Exception:  # noqa: BLE001 - how the client side ends (a close, a reset) is not under test
        pass


async def _hostile_http(client: Any, i: int) -> int:
    bodies: list[Any] = [DEEP, "[1]", "{", json.dumps({"text_ids": [1] * LIMIT}),
                         json.dumps({"text_ids": [1], "min_len": 9, "max_len": 2}), json.dumps({"text_ids": [1]})]
    body = bodies[(i // 2) % len(bodies)]  # i is even here
    if i % 7 == 0:  # a client that leaves mid-stream
        async with client.stream("POST", "/v1/speech_tokens", json={"text_ids": [1, 2], "max_len": 400}) as r:
            async for _ in r.aiter_lines():
                break
        return 200
    r = await client.post("/v1/speech_tokens", content=body, headers={"content-type": "application/json"})
    return r.status_code


def test_a_thousand_hostile_clients(server: BackgroundServer, model: cosyfast.Model) -> None:
    ws_url = _ws_url(server)

    async def storm() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=32)) as client:
            for start in range(0, 1000, 50):
                batch = range(start, start + 50)
                await asyncio.gather(*(_hostile_ws(ws_url, client, i) for i in batch if i % 2))
                statuses += await asyncio.gather(*(_hostile_http(client, i) for i in batch if not i % 2))
        return statuses

    statuses = asyncio.run(storm())
    assert 500 not in statuses and {400, 413, 422} <= set(statuses)
    wait_for(lambda: model.live_sessions == 0 and server.service.admitted == 0, "every session is freed")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/health").json()["live_sessions"] == 0
        r = c.post("/v1/speech_tokens", json={"text_ids": [1, 2, 3], "stream": False, "max_len": 5})
        assert r.status_code == 200 and r.json()["num_tokens"] == len(r.json()["tokens"]) > 0


def test_silent_clients_are_timed_out(model: cosyfast.Model) -> None:
    """A body that never arrives gets 408; a bistream that never sends its first message, or never
    answers its session's request for text, is closed and its session freed."""
    import socket

    with BackgroundServer(Service(model, idle_timeout_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/speech_tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"text_ids\": [1")
            answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer
        ws_url = url.replace("http", "ws") + "/v1/speech_tokens/bistream"
        with connect_ws(ws_url) as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_json(timeout=10)
            assert closed.value.code == 1008 and "no first message" in closed.value.reason
        with connect_ws(ws_url) as ws:
            ws.send_json(FIRST)
            assert ws.receive_json() == {"need_text": True}
            t0 = time.monotonic()
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_json(timeout=10)
            assert closed.value.code == 1008 and "no text for 0.5 s" in closed.value.reason
            assert time.monotonic() - t0 < 5
        wait_for(lambda: model.live_sessions == 0, "the silent session is freed")
        # a client that sent its text and waits for the tokens is not timed out
        with connect_ws(ws_url) as ws:
            ws.send_json({**FIRST, "max_len": 40})
            assert ws.receive_json() == {"need_text": True}
            ws.send_json({"text_ids": [10, 11, 12], "end": True})
            msgs = []
            while "finish_reason" not in (msgs or [{}])[-1]:
                msgs.append(ws.receive_json(timeout=10))
            assert msgs[-1]["finish_reason"] in ("stop_token", "max_len")


def test_whole_prompt_errors_name_a_field(tiny_cv3_dir: Path) -> None:
    """The core's sentences about the prompt as a whole still name the field to fix."""
    with cosyfast.load(tiny_cv3_dir, engine="cpu", max_session_len=64) as m, \
            BackgroundServer(Service(m)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/speech_tokens", json={"text_ids": [1, 2, 3], "prompt_text_ids": [4, 5]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "prompt_text_ids"
        assert "<|endofprompt|>" in r.json()["error"]["message"]
        r = c.post("/v1/speech_tokens", json={"text_ids": [1, 2, 151646], "prompt_speech_tokens": list(range(100))})
        assert r.status_code == 422 and r.json()["error"]["field"] == "prompt_speech_tokens"
        assert r.json()["error"]["message"].startswith("the prompt has")


def test_a_client_gone_mid_body_is_not_a_server_error(server: BackgroundServer, model: cosyfast.Model,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A client that leaves while its body arrives is the client's doing: no error (or traceback)
    in the server's log, nothing started, and the server still answers."""
    import logging
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.ERROR, logger="cosyfast.serve"):
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(b"POST /v1/speech_tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text_ids\": [1")
                time.sleep(0.05)
        time.sleep(0.5)
    assert not [r for r in caplog.records if r.name == "cosyfast.serve"], caplog.text
    assert model.live_sessions == 0
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
