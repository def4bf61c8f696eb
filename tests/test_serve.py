"""`cosyfast serve` on loopback: the tiny CPU model behind uvicorn, queried with httpx."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need the serve extra: pip install '.[serve]'")
pytest.importorskip("fastapi", reason="the serve tests need the serve extra: pip install '.[serve]'")
from httpx_ws import WebSocketDisconnect, connect_ws  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import cosyfast  # noqa: E402
from cosyfast.serve import BackgroundServer, Service  # noqa: E402
from cosyfast.serve.service import field_of  # noqa: E402

LONG = dict(min_len=19000, max_len=19000)  # ~25 s of tokens on the tiny model (long_model only)


@pytest.fixture(scope="module")
def model(tiny_cv2_dir: Path) -> Iterator[cosyfast.Model]:
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def long_model(tiny_cv2_dir: Path) -> Iterator[cosyfast.Model]:
    """Sessions long enough to interrupt whatever the machine's speed."""
    with cosyfast.load(tiny_cv2_dir, engine="cpu", max_session_len=20000, max_batch=4) as m:
        yield m


@pytest.fixture
def serve(model: cosyfast.Model) -> Iterator[Callable[..., BackgroundServer]]:
    """Starts a server over the module's model; every one started is stopped after the test."""
    servers: list[BackgroundServer] = []

    def start(on: cosyfast.Model | None = None, **options: Any) -> BackgroundServer:
        server = BackgroundServer(Service(on or model, **options))
        servers.append(server)
        server.__enter__()
        return server

    yield start
    for s in servers:
        s.stop()
        wait_for(lambda: s.service.model.live_sessions == 0, "every session ends with its server")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def body(i: int = 0, **options: Any) -> dict[str, Any]:
    return dict(text_ids=[1 + i, 2, 3, 4, 5 + i], prompt_text_ids=[7, 8], prompt_speech_tokens=[11, 12, 13 + i],
                seed=100 + i, **options)


def ndjson(lines: Iterator[str]) -> tuple[list[int], dict[str, Any], int]:
    """(tokens, the closing summary, number of token lines)."""
    msgs = [json.loads(line) for line in lines if line]
    tokens = [t for m in msgs[:-1] for t in m["tokens"]]
    return tokens, msgs[-1], len(msgs) - 1


def metrics(client: httpx.Client) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" not in s.labels:
                out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_streamed_tokens_equal_generate(serve, model: cosyfast.Model) -> None:
    url = serve().url
    ref = model.generate(**body())
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/speech_tokens", json=body()) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            tokens, summary, _ = ndjson(r.iter_lines())
        assert tokens == ref
        assert summary == {"finish_reason": "max_len" if len(ref) == summary["num_tokens"] == model.stream(
            **body()).max_len else "stop_token", "num_tokens": len(ref)}
        whole = c.post("/v1/speech_tokens", json=body(stream=False)).json()
        assert whole["tokens"] == ref and whole["num_tokens"] == len(ref)
        with c.stream("POST", "/v1/speech_tokens", json=body(), headers={"Accept": "text/event-stream"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [e for e in r.read().decode().split("\n\n") if e]
        data = [(e.split("\n")[0], json.loads(e.split("\n")[1].removeprefix("data: "))) for e in events]
        assert [t for name, d in data if name == "event: tokens" for t in d["tokens"]] == ref
        assert data[-1] == ("event: done", summary)


def test_ready_tokens_travel_together(model: cosyfast.Model) -> None:
    """Tokens queued before the event loop looks reach the session as one batch (one wake)."""
    async def batches_after_a_pause() -> list[list[int]]:
        service = Service(model)
        session, _ = service.start(json.dumps(body(min_len=200, max_len=200)))
        assert session.stream.wait(30)  # every token is queued before the loop looks
        return [b async for b in session.batches()]

    batches = asyncio.run(batches_after_a_pause())
    assert len(batches) == 1 and len(batches[0]) == 200


def test_first_tokens_go_at_once_later_ones_together(long_model: cosyfast.Model) -> None:
    """With a flush interval, the first tokens reach the reader at once; later ones come at most
    once per interval (the end with the last batch); with none, every engine delivery wakes it."""
    interval, n = 0.3, 6000

    async def batches(flush_interval_s: float) -> tuple[list[float], list[int]]:
        service = Service(long_model, flush_interval_s=flush_interval_s)
        t0 = time.perf_counter()
        session, _ = service.start(json.dumps(body(min_len=n, max_len=n)))
        times, sizes = [], []
        async for b in session.batches():
            times.append(time.perf_counter() - t0)
            sizes.append(len(b))
        return times, sizes

    # a fresh model's first session pays its warm-up (0.29 s once on the CI box): not a flush
    long_model.generate(**body(min_len=2, max_len=2))
    times, sizes = asyncio.run(batches(interval))
    assert sum(sizes) == n
    assert times[0] < interval / 2, times[:3]  # the first token did not wait for a flush
    assert len(times) >= 3, (times, sizes)  # the run outlasted a flush or two
    gaps = [b - a for a, b in zip(times, times[1:-1] + [times[-1]])][:-1]
    assert min(gaps) >= 0.9 * interval, gaps
    every_step = asyncio.run(batches(0.0))[1]
    assert sum(every_step) == n and len(every_step) > 2 * len(sizes)


def test_flush_interval_is_checked(model: cosyfast.Model) -> None:
    for bad in (-0.001, 1.5):
        with pytest.raises(ValueError, match=r"flush_interval_s must be in \[0, 1\] seconds"):
            Service(model, flush_interval_s=bad)


def test_64_concurrent_clients(serve, model: cosyfast.Model) -> None:
    url = serve(max_sessions=64).url
    refs = [model.generate(**body(i, max_len=60)) for i in range(64)]

    async def one(client: httpx.AsyncClient, i: int) -> list[int]:
        async with client.stream("POST", "/v1/speech_tokens", json=body(i, max_len=60)) as r:
            assert r.status_code == 200
            return ndjson(iter([line async for line in r.aiter_lines()]))[0]

    async def all_clients() -> list[list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    assert asyncio.run(all_clients()) == refs


def test_disconnect_ends_the_session(serve, long_model: cosyfast.Model) -> None:
    model = long_model
    srv = serve(long_model)
    url, service = srv.url, srv.service
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/speech_tokens", json=body(**LONG)) as r:
            # Hold the iterator: a dropped one is closed at once, and closing it closes the
            # connection (a disconnect before the check below).
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert first["tokens"] and model.live_sessions == 1
        # leaving the block closed the connection mid-stream
        wait_for(lambda: model.live_sessions == 0 and service.admitted == 0, "the engine session ends")
        m = metrics(c)
    assert m['cosyfast_sessions_finished_total{reason=cancelled}'] == 1
    assert m["cosyfast_tokens_total"] < 19000


# The core's range checks: the HTTP error says the Python API's own sentence.
SAME_AS_PYTHON = [
    ({"text_ids": [1], "top_p": 2.0}, "top_p"),
    ({"text_ids": [1], "top_k": 0}, "top_k"),
    ({"text_ids": [1], "max_len": 0}, "max_len"),
    ({"text_ids": [1], "prompt_speech_tokens": [99999]}, "prompt_speech_tokens"),
    ({"text_ids": [10**9]}, "text_ids"),
    ({"text_ids": [1], "prompt_text_ids": [10**6]}, "prompt_text_ids"),
    ({"text_ids": [1, 10**6], "prompt_text_ids": [3]}, "text_ids"),
    ({"text_ids": [1], "min_len": 10, "max_len": 5}, "min_len"),
]
# Types, unknown fields and shapes: pydantic's check, naming the field.
REFUSED_BY_SCHEMA = [
    ({"text_ids": [1], "seed": -3}, "seed"),  # the API's width check (seed is a uint64)
    ({"text_ids": "hello"}, "text_ids"),
    ({"text_ids": [[[1]]]}, "text_ids"),
    ({"text_ids": [1, True]}, "text_ids"),
    ({"text_ids": [1], "top_k": 2.5}, "top_k"),
    ({"text_ids": [1], "temperature": 0.7}, "temperature"),
    ({"text_ids": [1], "stream": "yes"}, "stream"),
    ({"prompt_text_ids": [1]}, "text_ids"),
]


@pytest.mark.parametrize("bad, status, field", [(b, 422, f) for b, f in SAME_AS_PYTHON + REFUSED_BY_SCHEMA] + [
    ([1, 2, 3], 400, None),
    ("{not json", 400, None),
    ("", 400, None),
    ('{"text_ids": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, None),  # no RecursionError, no 500
])
def test_bad_bodies(serve, model: cosyfast.Model, bad: Any, status: int, field: str | None) -> None:
    url = serve().url
    content = bad if isinstance(bad, str) else json.dumps(bad)
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/speech_tokens", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["field"] == field and err["message"]
        if field is not None:
            assert field in err["message"] or field.replace("_", " ").removesuffix("s") in err["message"]
        if (bad, field) in SAME_AS_PYTHON:
            with pytest.raises((ValueError, TypeError)) as e:
                model.generate(**bad)
            assert err["message"] in (str(e.value), f"{field}: {e.value}")
        assert metrics(c)["cosyfast_requests_rejected_total{cause=invalid}"] == 1
    assert model.live_sessions == 0


def test_503_when_full(serve, model: cosyfast.Model) -> None:
    srv = serve(max_sessions=2, retry_after_s=3)
    url, service = srv.url, srv.service
    with httpx.Client(base_url=url, timeout=30) as c:
        held = [_parked_bistream(url) for _ in range(2)]  # live until their clients leave
        r = c.post("/v1/speech_tokens", json=body())
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert "2 live sessions" in r.json()["error"]["message"]
        for cm, _ in held:
            cm.__exit__(None, None, None)
        wait_for(lambda: service.admitted == 0, "the held sessions end")
        assert c.post("/v1/speech_tokens", json=body(stream=False)).status_code == 200  # nothing else was dropped
        m = metrics(c)
    assert m["cosyfast_requests_rejected_total{cause=full}"] == 1


def test_metrics_and_health(serve, model: cosyfast.Model) -> None:
    url = serve(max_sessions=8).url
    with httpx.Client(base_url=url, timeout=30) as c:
        h = c.get("/health")
        assert h.status_code == 200
        assert h.json() | {"live_sessions": 0} == {"status": "ok", "engine": "cpu", "kind": "cosyvoice2",
                                                    "live_sessions": 0, "admitted_sessions": 0, "max_sessions": 8}
        sent = sum(len(c.post("/v1/speech_tokens", json=body(i, stream=False, max_len=30)).json()["tokens"])
                   for i in range(3))
        m = metrics(c)
    assert m["cosyfast_tokens_total"] == sent
    assert m["cosyfast_time_to_first_token_seconds_count"] == 3
    assert m["cosyfast_time_to_first_token_seconds_sum"] > 0
    assert sum(v for k, v in m.items() if k.startswith("cosyfast_sessions_finished_total{")) == 3
    assert m["cosyfast_live_sessions"] == 0 and m["cosyfast_admitted_sessions"] == 0
    assert m["cosyfast_request_tokens_count"] == 3 and m["cosyfast_request_tokens_sum"] == sent
    assert m["cosyfast_request_duration_seconds_count"] == 3
    assert "cosyfast_inter_token_latency_seconds_count" in m
    assert "process_cpu_seconds_total" in m and "cosyfast_tokens_per_second" not in m
    assert not [k for k in m if k.endswith("_created")]


def _bistream_reference(model: cosyfast.Model, first: dict[str, Any], pieces: list[list[int]]) -> list[int]:
    options = {k: v for k, v in first.items() if k not in ("prompt_text_ids", "prompt_speech_tokens")}
    s = model.bistream(first["prompt_text_ids"], first["prompt_speech_tokens"], **options)
    for p in pieces:
        s.push_text(p)
    s.end_text()
    out = []
    while (e := s.next_event()) is not None:
        if e != s.NEED_TEXT:
            out.append(e)
    return out


BISTREAM_FIRST = dict(prompt_text_ids=[3, 4, 5], prompt_speech_tokens=list(range(20, 52)), seed=9, max_len=300)
PIECES = [[10, 11, 12], [13, 14, 15, 16, 17, 18], [], [19, 20, 21, 22, 23, 24, 25], [26, 27]]


def test_bistream_over_websocket(serve, model: cosyfast.Model) -> None:
    srv = serve()
    url, service = srv.url, srv.service
    ref = _bistream_reference(model, BISTREAM_FIRST, PIECES)
    assert ref
    with connect_ws(url.replace("http", "ws") + "/v1/speech_tokens/bistream") as ws:
        ws.send_json(BISTREAM_FIRST)
        pieces, tokens, asked = list(PIECES), [], 0
        while True:  # text goes in only when the session asks for it
            msg = ws.receive_json()
            if "tokens" in msg:
                tokens += msg["tokens"]
            elif "need_text" in msg:
                asked += 1
                ws.send_json({"text_ids": pieces.pop(0)} if pieces else {"end": True})
            else:
                summary = msg
                break
    assert tokens == ref and asked >= len(PIECES) + 1
    assert summary == {"finish_reason": summary["finish_reason"], "num_tokens": len(ref)}
    assert summary["finish_reason"] in ("stop_token", "max_len")
    wait_for(lambda: service.admitted == 0, "the bistream session ends")


def test_bistream_errors_and_disconnect(serve, model: cosyfast.Model) -> None:
    srv = serve()
    url, service = srv.url, srv.service
    ws_url = url.replace("http", "ws") + "/v1/speech_tokens/bistream"
    with connect_ws(ws_url) as ws:
        ws.send_json({**BISTREAM_FIRST, "top_p": 5})
        assert ws.receive_json() == {"error": {"field": "top_p", "message": "top_p must be in (0, 1], got 5"},
                                     "status": 422}
    with connect_ws(ws_url) as ws:
        ws.send_json(BISTREAM_FIRST)
        ws.send_json({"text_ids": [10**9]})
        msgs = []
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                msgs.append(ws.receive_json())
        assert any(m.get("error", {}).get("field") == "text_ids" for m in msgs), msgs
        assert closed.value.code == 1008 and closed.value.reason.startswith("text_ids: ")
    with connect_ws(ws_url) as ws:  # a client that leaves while its session waits for text
        ws.send_json(BISTREAM_FIRST)
        assert ws.receive_json() == {"need_text": True}
        wait_for(lambda: model.parked_sessions == 1, "the session waits for text")
    wait_for(lambda: model.live_sessions == 0 and service.admitted == 0, "the left session ends")


def _parked_bistream(url: str) -> Any:
    """A WebSocket bistream whose session waits for text: live until the client or server ends it."""
    cm = connect_ws(url.replace("http", "ws") + "/v1/speech_tokens/bistream")
    ws = cm.__enter__()
    ws.send_json(BISTREAM_FIRST)
    assert ws.receive_json() == {"need_text": True}
    return cm, ws


def test_shutdown_lets_live_streams_finish(serve, model: cosyfast.Model) -> None:
    srv = serve(drain_timeout_s=30)
    cm, ws = _parked_bistream(srv.url)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    wait_for(lambda: srv.service.draining, "the server starts draining")
    with httpx.Client(base_url=srv.url, timeout=30) as c:  # no new sessions while draining
        r = c.post("/v1/speech_tokens", json=body())
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
    assert stopper.is_alive(), "the server waits for its live session"
    ws.send_json({"text_ids": PIECES[0], "end": True})
    msgs = []
    while "finish_reason" not in (msgs or [{}])[-1]:
        msgs.append(ws.receive_json())
    cm.__exit__(None, None, None)
    assert msgs[-1]["finish_reason"] in ("stop_token", "max_len") and msgs[-1]["num_tokens"] > 0
    stopper.join(30)
    assert not stopper.is_alive()


def test_shutdown_cancels_streams_after_the_timeout(serve, model: cosyfast.Model) -> None:
    srv = serve(drain_timeout_s=0.3)
    cm, ws = _parked_bistream(srv.url)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 10
    assert ws.receive_json() == {"finish_reason": "cancelled", "num_tokens": 0}
    cm.__exit__(None, None, None)
    assert model.live_sessions == 0


def test_field_of_picks_the_first_named_field() -> None:
    fields = ("text_ids", "prompt_text_ids", "prompt_speech_tokens", "top_p", "top_k")
    assert field_of("top_k must be >= 1, got 0 (top_p is fine)", fields) == "top_k"
    assert field_of("prompt text id: id 5 is outside [0, 4)", fields) == "prompt_text_ids"
    assert field_of("text id: id 5 is outside [0, 4)", fields) == "text_ids"
    assert field_of("prompt speech token 99 is outside", fields) == "prompt_speech_tokens"
    assert field_of("the prompt has 5000 rows", fields) is None


def test_bench_serve_path(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    from cosyfast.bench.main import main

    out = tmp_path / "bench"
    assert main(["--checkpoint", str(tiny_cv2_dir), "--engine", "cpu", "--paths", "cosyfast,serve",
                 "--concurrency", "1,3", "--new-tokens", "6", "--prompt-rows", "8", "--client-procs", "2",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["path"], r["concurrency"]) for r in rows] == [("cosyfast", 1), ("cosyfast", 3), ("serve", 1),
                                                              ("serve", 3)]
    for r in rows[2:]:
        assert r["tokens"] == 6 * r["concurrency"]  # every token came back over HTTP
        assert r["first_token_ms_p50"] > 0 and isinstance(r["extra"]["overhead_us_per_token"], float)
        assert r["extra"]["client_procs"] == min(2, r["concurrency"])  # the clients' CPU is in the record
        assert r["extra"]["client_cpu_s"] >= 0 and r["extra"]["server_cpu_s"] >= 0
        assert 0 < r["extra"]["server_loop_cpu_s"] <= r["extra"]["server_cpu_s"]
        # where the first token's time went, p50 and p90 ms after the go: each stage after the one before
        stages = r["extra"]["first_token_timeline_ms"]
        assert list(stages) == ["client_sent", "received", "admitted", "engine_first", "first_delivered",
                                "client_first"]
        p50s = [stages[k][0] for k in stages]
        assert p50s == sorted(p50s) and p50s[0] >= 0, stages
        assert all(p50 <= p90 for p50, p90 in stages.values())


def test_bench_serve_rows_per_flush_interval(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    """--serve-flush-ms 0 --serve-flush-ms 5: the old behaviour and the default, in one call."""
    from cosyfast.bench.main import main

    out = tmp_path / "bench"
    assert main(["--checkpoint", str(tiny_cv2_dir), "--engine", "cpu", "--paths", "cosyfast,serve",
                 "--concurrency", "2", "--new-tokens", "6", "--prompt-rows", "8", "--client-procs", "1",
                 "--serve-flush-ms", "0", "--serve-flush-ms", "5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["cosyfast", "serve-flush0ms", "serve-flush5ms"]
    assert all(r["tokens"] == 12 for r in rows)


def test_openapi_shows_the_request_models(serve) -> None:
    url = serve().url
    with httpx.Client(base_url=url, timeout=30) as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    post = spec["paths"]["/v1/speech_tokens"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    props = schema["properties"]
    assert {"text_ids", "text", "prompt_text_ids", "prompt_text", "prompt_speech_tokens", "stream", "seed", "top_p",
            "max_len", "min_len"} <= set(props)
    assert schema["additionalProperties"] is False
    assert props["top_p"]["default"] == cosyfast.model.request_options.__kwdefaults__["top_p"]
    assert {"200", "413", "422", "503"} <= set(post["responses"])


def test_the_access_log_is_on_by_default_and_can_be_turned_off(model: cosyfast.Model) -> None:
    """uvicorn's line per request costs the event loop ~50 us: `cosyfast serve --no-access-log`."""
    from cosyfast.serve.server import make_server, parser

    assert parser().parse_args([]).access_log is True
    assert parser().parse_args(["--no-access-log"]).access_log is False
    service = Service(model)
    assert make_server(service).config.access_log is True
    assert make_server(service, access_log=False).config.access_log is False


def test_a_stream_writes_its_headers_with_the_first_tokens_and_the_last_with_the_summary(
        long_model: cosyfast.Model) -> None:
    """Every write is a system call on the event loop that also admits a burst's requests: the
    status line waits for the first tokens (nothing goes out at admission), and tokens that are
    still waiting for a flush when the stream ends share the summary's write."""
    from cosyfast.serve.app import TokenStream

    n = 100  # well inside one flush interval on the tiny model: the later tokens wait for the end

    async def writes() -> list[dict[str, Any]]:
        service = Service(long_model, flush_interval_s=1.0)
        session, _ = service.start(json.dumps(body(min_len=n, max_len=n)))
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if not sent:  # nothing was written before the first tokens had arrived
                assert session.sent > 0, message
            sent.append(message)

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays: no disconnect
            return {}

        await TokenStream(session, sse=False)({"type": "http"}, receive, send)
        return sent

    long_model.generate(**body(min_len=2, max_len=2))  # warm: the run below must end within the interval
    sent = asyncio.run(writes())
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * (len(sent) - 1)
    lines = [json.loads(line) for m in sent[1:] for line in m["body"].decode().splitlines()]
    tokens = [t for line in lines[:-1] for t in line["tokens"]]
    assert len(tokens) == n and lines[-1] == {"finish_reason": "max_len", "num_tokens": n}
    assert len(sent) == 3, [m.get("body", b"")[:60] for m in sent]  # start, the first tokens, the rest + summary
    last = sent[-1]["body"].decode().splitlines()
    assert not sent[-1]["more_body"] and len(last) == 2 and "tokens" in json.loads(last[0]), last
    assert sent[1]["more_body"]


def test_tokens_json_is_the_json_of_the_tokens() -> None:
    from cosyfast.serve.app import _DUMP, tokens_json

    for tokens in ([], [0], [6560, 17, 0, 4096], list(range(300))):
        assert tokens_json(tokens) == _DUMP({"tokens": tokens})
        assert json.loads(tokens_json(tokens)) == {"tokens": tokens}
