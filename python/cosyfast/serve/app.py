"""The HTTP API (FastAPI): streamed speech tokens, WebSocket bistream, health and metrics.

POST /v1/speech_tokens       body: SpeechTokensRequest (schema.py, and /openapi.json);
                             "stream": false answers in one JSON object (Complete).
                             Streams NDJSON lines, or server-sent events with Accept: text/event-stream:
                             {"tokens": [...]} per batch of ready tokens, then
                             {"finish_reason": ..., "num_tokens": N} (or {"error": ...}).
WS   /v1/speech_tokens/bistream   first message: BistreamStart (prompt, options, mix_ratio); then
                             BistreamText messages ({"text_ids": [...]} pieces, {"end": true}); the
                             server sends {"tokens": [...]}, {"need_text": true}, then the summary.
                             A message that is not valid JSON text of that shape ends the session
                             at once: an {"error": ...} message, then a close frame with the reason.
GET  /health, GET /metrics (Prometheus text format).

Every client is treated as hostile: bodies and messages are bounded (Service.max_body_bytes,
413 / close 1009), JSON nesting is bounded (400 / close 1007), and a session ends whatever its
client does (disconnect, bad frame, silence while the server drains).
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketState

from ..model import _ids
from .schema import BistreamText, Complete, ErrorBody, SpeechTokensRequest, Summary, TokensChunk
from .service import NEED_TEXT, RequestError, Service, Session, _validation_error

T = TypeVar("T")
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_DUMP = json.JSONEncoder(separators=(",", ":")).encode


def tokens_json(tokens: list[int]) -> str:
    """{"tokens":[...]} as _DUMP writes it, in a third of its time: one is written per stream per
    flush, on the event loop (the ids are ints from the engine)."""
    return '{"tokens":[' + ",".join(map(str, tokens)) + "]}"


def _error(e: RequestError) -> JSONResponse:
    headers = dict(e.headers)
    if e.status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is not read
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """`awaitable`'s result, or asyncio.TimeoutError after `timeout_s`. From Python 3.11 a timeout
    scope: asyncio.wait_for of 3.10 and 3.11 runs the awaitable as a task of its own, a trip through
    the event loop on every request (3.12's wait_for is such a scope itself). A burst of 64 streamed
    requests on the 2-core CPU box, Python 3.11: 345-397 us of the loop's time per request with
    wait_for, 229-307 with the scope (3 alternating runs)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout_s)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to pass `limit` bytes: from
    Content-Length before anything is read, else (chunked) while it arrives; 408 when it takes
    longer than `timeout_s` to arrive."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {declared} bytes, over the limit of {limit} bytes")
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the body passes the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await within(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def _client_gone(receive: Callable[[], Any]) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class TokenStream(Response):
    """The streamed answer: one NDJSON line (or SSE event) per batch of ready tokens, then the
    summary. Written straight to the ASGI `send`; a disconnect cancels the session at once, even
    while no token is due. Every write is a system call on the event loop, which also admits the
    requests of a burst: the status line and headers go out with the first tokens (not at
    admission), and tokens still waiting for a flush when the stream ends go with the summary."""

    def __init__(self, session: Session, sse: bool) -> None:
        self.session, self.sse = session, sse
        self.status_code = 200
        self.media_type = SSE if sse else NDJSON
        self.background = None
        self.init_headers(None)

    def _frame(self, event: str, text: str) -> bytes:
        return (f"event: {event}\ndata: {text}\n\n" if self.sse else text + "\n").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session
        watcher: asyncio.Future[None] | None = None
        started = False

        async def write(body: bytes, more: bool) -> None:
            nonlocal started
            if not started:  # the status line and headers, with the first body
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                started = True
            await send({"type": "http.response.body", "body": body, "more_body": more})

        try:
            # One turn of the loop first: the requests that arrived with this one (a burst) are
            # admitted before this one's watcher starts (64 streams on the 2-core CPU box, 3
            # alternating runs each: admission p90 8.2-11.3 -> 7.1-8.4 ms).
            await asyncio.sleep(0)
            watcher = asyncio.ensure_future(_client_gone(receive))
            watcher.add_done_callback(lambda _: session.cancel())
            held = b""  # the last tokens, held for the summary's write
            try:
                async for tokens in session.batches():
                    frame = self._frame("tokens", tokens_json(tokens))
                    if session.drained:
                        held = frame
                        continue  # the stream has ended: the summary follows in the same write
                    await write(frame, True)
                last = held + self._frame("done", _DUMP(session.summary()))
            except RuntimeError as e:
                last = held + self._frame("error", _DUMP({"error": {"field": None, "message": str(e)}}))
            await write(last, False)
        except OSError:  # the client left mid-write (uvicorn's ClientDisconnected)
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            session.cancel()  # ended early (client gone, server stopping): free the engine session now


async def _all_tokens(session: Session, request: Request) -> JSONResponse:
    watcher = asyncio.ensure_future(_client_gone(request.receive))
    watcher.add_done_callback(lambda _: session.cancel())
    tokens: list[int] = []
    try:
        async for batch in session.batches():
            tokens += batch
    except RuntimeError as e:
        return JSONResponse({"error": {"field": None, "message": str(e)}}, status_code=500)
    finally:
        watcher.cancel()
        session.cancel()
    return JSONResponse({"tokens": tokens, **session.summary()})


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


async def speech_tokens(service: Service, request: Request) -> Response:
    """POST /v1/speech_tokens: the streamed (or whole) answer, or the error."""
    received = time.perf_counter()
    try:
        session, body = service.start(await read_body(request, service.max_body_bytes, service.idle_timeout_s),
                                      received=received)
    except RequestError as e:
        return _error(e)
    if not body.stream:
        return await _all_tokens(session, request)
    return TokenStream(session, SSE in request.headers.get("accept", ""))


async def bistream(service: Service, ws: WebSocket) -> None:
    """WS /v1/speech_tokens/bistream: one bistream session, the client's text read alongside."""
    await ws.accept()
    try:
        first = await within(_receive_text(ws, service.max_body_bytes), service.idle_timeout_s)
    except asyncio.TimeoutError:
        await _refuse(ws, RequestError(408, f"no first message within {service.idle_timeout_s:g} s"), 1008)
        return
    if first is None:
        return
    try:
        session, _ = service.start(first, bistream=True)
    except RequestError as e:
        # 1013: try again later; 1007: not a JSON object; 1008: a message that breaks the protocol
        await _refuse(ws, e, 1013 if e.status == 503 else 1007 if e.status == 400 else 1008)
        return
    reader = asyncio.ensure_future(_read_text(ws, session, service))
    try:
        async for batch in session.batches():
            if ws.application_state != WebSocketState.CONNECTED:
                continue  # closed by the reader: wait for the cancelled session's end only
            tokens = [t for t in batch if t != NEED_TEXT]
            if tokens:
                await ws.send_text(tokens_json(tokens))
            if len(tokens) < len(batch):
                await ws.send_text('{"need_text":true}')
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.send_text(_DUMP(session.summary()))
            await ws.close()
    except (OSError, RuntimeError, WebSocketDisconnect):
        pass  # the client left, or the session failed
    finally:
        reader.cancel()
        session.cancel()


class App:
    """The ASGI app: the two token routes straight from the server, everything else (health,
    metrics, /docs, /openapi.json, the lifespan) through the FastAPI app `api`, which declares
    the token routes too (their schema; the same handlers). Why: FastAPI's middleware and routing
    cost more per request than parsing and starting the session, and wrap every write of a stream."""

    def __init__(self, api: FastAPI, service: Service) -> None:
        self.api, self.service = api, service
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if kind == "http" and path == "/v1/speech_tokens" and scope["method"] == "POST":
                try:
                    response = await speech_tokens(self.service, Request(scope, receive))
                except ClientDisconnect:  # gone while its body arrived: nothing started, nobody to answer
                    return
                except Exception:  # noqa: BLE001 - what FastAPI's ServerErrorMiddleware would do: log, 500
                    logging.getLogger("cosyfast.serve").exception("POST /v1/speech_tokens failed")
                    response = JSONResponse({"error": {"field": None, "message": "internal error"}}, 500)
                await response(scope, receive, send)
                return
            if kind == "websocket" and path == "/v1/speech_tokens/bistream":
                await bistream(self.service, WebSocket(scope, receive, send))
                return
        await self.api(scope, receive, send)


def create_app(service: Service) -> App:
    """The ASGI app over one Service; its shutdown drains the service (see Service.drain)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.drain()

    api = FastAPI(title="cosyfast", summary="CosyVoice LLM stage: text + voice prompt -> speech tokens",
                  lifespan=lifespan)
    api.state.service = service
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorBody} for s in (400, 413, 422, 503)}

    # The body is read by the handler, not by FastAPI: bounded before parsing, parsed by the same
    # pydantic model the schema shows (openapi_extra), with the service's own error shape.
    @api.post("/v1/speech_tokens", openapi_extra=_body_schema(SpeechTokensRequest),
              responses={200: {"model": Complete, "description": "stream false: one JSON object; else NDJSON "
                               "lines (or SSE events) of TokensChunk, then Summary",
                               "content": {NDJSON: {"schema": TokensChunk.model_json_schema()},
                                           SSE: {"schema": Summary.model_json_schema()}}}, **errors})
    async def post_speech_tokens(request: Request) -> Response:
        return await speech_tokens(service, request)

    @api.websocket("/v1/speech_tokens/bistream")
    async def ws_bistream(ws: WebSocket) -> None:
        await bistream(service, ws)

    @api.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(service.health(), status_code=503 if service.draining else 200)

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return App(api, service)


class _Refused(Exception):
    def __init__(self, error: RequestError, code: int) -> None:
        self.error, self.code = error, code


async def _receive_text(ws: WebSocket, limit: int) -> str | None:
    """One text message, or None once the client has gone or the message was refused (the
    connection is closed with the reason then)."""
    try:
        return await _next_text(ws, limit)
    except _Refused as r:
        await _refuse(ws, r.error, r.code)
        return None


async def _next_text(ws: WebSocket, limit: int) -> str | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    text = msg.get("text")
    if text is None:
        raise _Refused(RequestError(400, "binary messages are not accepted: send JSON text"), 1003)
    if len(text) > limit:
        raise _Refused(RequestError(413, f"a message passes the limit of {limit} bytes"), 1009)
    return text


async def _refuse(ws: WebSocket, e: RequestError, code: int) -> None:
    """Says why (an error message, then the close frame's reason), then closes."""
    if ws.application_state != WebSocketState.CONNECTED:
        return
    try:
        await ws.send_text(_DUMP({**e.body(), "status": e.status}))
        reason = (f"{e.field}: " if e.field else "") + e.message
        await ws.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))
    except (OSError, RuntimeError, WebSocketDisconnect):
        pass  # the client is gone already


async def _read_text(ws: WebSocket, session: Session, service: Service) -> None:
    """Client -> session: each {"text_ids": [...]} (or {"text": "..."}) is one piece of text,
    {"end": true} the end.
    Anything else cancels the session at once and closes the connection with the reason; the
    text a session holds is bounded by the engine's session length."""
    budget = service.model.max_session_len
    ended = False
    try:
        while True:
            try:
                raw = await within(_next_text(ws, service.max_body_bytes), service.idle_timeout_s)
            except asyncio.TimeoutError:
                if session.waits_for_text and not ended:  # a silent client would hold its session forever
                    raise _Refused(RequestError(408, f"no text for {service.idle_timeout_s:g} s while the session "
                                                "waits for it"), 1008) from None
                continue
            if raw is None:
                break
            try:
                msg = BistreamText.model_validate_json(raw)
            except ValidationError as e:
                err = _validation_error(e)
                raise _Refused(err, 1007 if err.status == 400 else 1008) from None
            if ended:
                raise _Refused(RequestError(422, "a message after {\"end\": true}: the text has ended"), 1008)
            if msg.text is not None or msg.text_ids is not None:
                try:
                    ids = service.encode("text", msg.text, msg.text_ids) if msg.text is not None else \
                        _ids(msg.text_ids, "text_ids")
                except RequestError as e:
                    raise _Refused(e, 1008) from None
                budget -= len(ids)
                if budget < 0:
                    raise _Refused(RequestError(413, "text_ids: the text passes the session limit of "
                                                f"{service.model.max_session_len} ids", "text_ids"), 1009)
                session.waits_for_text = False
                try:
                    session.stream.push_text(ids)
                except (ValueError, TypeError) as e:
                    raise _Refused(RequestError(422, str(e), "text_ids"), 1008) from None
            if msg.end:
                session.waits_for_text = False
                session.stream.end_text()
                ended = True
    except _Refused as r:
        session.cancel()
        await _refuse(ws, r.error, r.code)
        return
    except (OSError, RuntimeError, WebSocketDisconnect):
        pass
    session.cancel()  # the client left (a session that ended normally ignores the cancel)
