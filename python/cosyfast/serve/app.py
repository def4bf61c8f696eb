"""The HTTP API (FastAPI): streamed speech tokens, WebSocket bistream, health and metrics.

POST /v1/speech_tokens       body: text_ids, prompt_text_ids, prompt_speech_tokens, seed and the
                             options of `Model.stream`; "stream": false answers in one JSON object.
                             Streams NDJSON lines, or server-sent events with Accept: text/event-stream:
                             {"tokens": [...]} per batch of ready tokens, then
                             {"finish_reason": ..., "num_tokens": N} (or {"error": ...}).
WS   /v1/speech_tokens/bistream   first message: prompt_text_ids, prompt_speech_tokens, options,
                             mix_ratio; then {"text_ids": [...]} pieces and {"end": true}; the
                             server sends {"tokens": [...]}, {"need_text": true}, then the summary.
GET  /health, GET /metrics (Prometheus text format).
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..model import _ids
from .service import NEED_TEXT, RequestError, Service, Session, parse_json

SSE = "text/event-stream"


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _client_gone(receive: Callable[[], Any]) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _frame(sse: bool, event: str, data: dict[str, Any]) -> str:
    text = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n" if sse else text + "\n"


async def _events(session: Session, request: Request, sse: bool) -> AsyncIterator[str]:
    # A disconnect cancels the engine session at once, even while no token is due to be written.
    watcher = asyncio.ensure_future(_client_gone(request.receive))
    watcher.add_done_callback(lambda _: session.cancel())
    try:
        async for tokens in session.batches():
            yield _frame(sse, "tokens", {"tokens": tokens})
        yield _frame(sse, "done", session.summary())
    except RuntimeError as e:
        yield _frame(sse, "error", {"error": {"field": None, "message": str(e)}})
    finally:
        watcher.cancel()
        session.cancel()  # ended early (client gone, server stopping): free the engine session now


async def _all_tokens(session: Session, request: Request) -> JSONResponse:
    tokens: list[int] = []
    async for frame in _events(session, request, sse=False):
        msg = json.loads(frame)
        if "error" in msg:
            return JSONResponse(msg, status_code=500)
        tokens.extend(msg.get("tokens", ()))
    return JSONResponse({"tokens": tokens, **session.summary()})


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over one Service; its shutdown drains the service (see Service.drain)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.drain()

    app = FastAPI(title="cosyfast", summary="CosyVoice LLM stage: text + voice prompt -> speech tokens",
                  lifespan=lifespan)
    app.state.service = service

    @app.post("/v1/speech_tokens")
    async def speech_tokens(request: Request) -> Response:
        try:
            session, extras = service.start(await request.body(), {"stream": True})
        except RequestError as e:
            return _error(e)
        if not extras["stream"]:
            return await _all_tokens(session, request)
        sse = SSE in request.headers.get("accept", "")
        return StreamingResponse(_events(session, request, sse), media_type=SSE if sse else "application/x-ndjson")

    @app.websocket("/v1/speech_tokens/bistream")
    async def bistream(ws: WebSocket) -> None:
        await ws.accept()
        try:
            session, _ = service.start(await ws.receive_text(), {}, bistream=True)
        except RequestError as e:
            await ws.send_json({**e.body(), "status": e.status})
            await ws.close(code=1013 if e.status == 503 else 1008)  # 1013: try again later
            return
        except WebSocketDisconnect:
            return
        reader = asyncio.ensure_future(_read_text(ws, session))
        try:
            async for batch in session.batches():
                tokens = [t for t in batch if t != NEED_TEXT]
                if tokens:
                    await ws.send_json({"tokens": tokens})
                if len(tokens) < len(batch):
                    await ws.send_json({"need_text": True})
            await ws.send_json(session.summary())
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left, or the session failed and its reader already said why
        finally:
            reader.cancel()
            session.cancel()

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(service.health(), status_code=503 if service.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_text(ws: WebSocket, session: Session) -> None:
    """Client -> session: each {"text_ids": [...]} is one piece of text, {"end": true} the end."""
    try:
        while True:
            msg = parse_json(await ws.receive_text())
            unknown = sorted(set(msg) - {"text_ids", "end"})
            if unknown:
                raise RequestError(422, f"unknown field {unknown[0]!r}; messages hold text_ids and/or end",
                                   unknown[0])
            if "text_ids" in msg:
                try:
                    session.stream.push_text(_ids(msg["text_ids"], "text_ids"))
                except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: text after the end
                    raise RequestError(422, str(e), "text_ids") from None
            if msg.get("end"):
                session.stream.end_text()
                return
    except RequestError as e:
        session.cancel()
        await ws.send_json({**e.body(), "status": e.status})
    except WebSocketDisconnect:
        session.cancel()
