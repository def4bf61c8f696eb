"""What the HTTP app, the CLI and the Ray deployment share: admission of sessions, request
bodies checked by the Python API's own validation, token pumps and the Prometheus metrics.

Nothing here re-validates an option: bodies go to `Model.stream`/`Model.bistream` (that is,
`cosyfast.model.request_options` and the C++ core), and their errors are attributed to a field.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import time
from collections import deque
from typing import Any, AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import _core
from ..model import Model, request_options

ID_FIELDS = ("text_ids", "prompt_text_ids", "prompt_speech_tokens")
# The option names come from the Python API itself, so a new option is served without edits here.
OPTION_FIELDS = tuple(p.name for p in inspect.signature(request_options).parameters.values()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY)
NEED_TEXT: int = _core.Stream.NEED_TEXT  # the event a bistream sends when it waits for text


class RequestError(Exception):
    """A request the service refuses: `status` is the HTTP status, `field` the body field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


def _aliases(field: str) -> list[str]:
    # The core says "text id" / "prompt speech token" for an id out of range: the singular phrase.
    return [field, field.replace("_", " ").removesuffix("s")]


def field_of(message: str, fields: tuple[str, ...]) -> str | None:
    """The field an error message names first (its longest alias wins a tie), or None."""
    best: tuple[int, int, str] | None = None
    for f in fields:
        for alias in _aliases(f):
            m = re.search(rf"(?<![\w]){re.escape(alias)}(?![a-z])", message)
            if m and (best is None or (m.start(), -len(alias)) < best[:2]):
                best = (m.start(), -len(alias), f)
    return best[2] if best else None


def parse_json(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def split_body(body: dict[str, Any], ids: tuple[str, ...], extra: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(id fields, options, extras with their defaults); unknown fields are refused by name."""
    allowed = set(ids) | set(OPTION_FIELDS) | set(extra)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; fields are {sorted(allowed)}", unknown[0])
    id_part = {k: body[k] for k in ids if k in body}
    options = {k: body[k] for k in OPTION_FIELDS if k in body}
    extras = {k: body.get(k, default) for k, default in extra.items()}
    for k, default in extra.items():
        if not isinstance(extras[k], type(default)):
            raise RequestError(422, f"{k} must be {type(default).__name__}, got {extras[k]!r}", k)
    return id_part, options, extras


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several services per process)."""

    WINDOW_S = 10  # tokens/s is the count over the last WINDOW_S whole seconds

    def __init__(self, model: Model, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Gauge("cosyfast_live_sessions", "Requests started and not finished in the engine", registry=r
              ).set_function(lambda: model.live_sessions)
        self.admitted = Gauge("cosyfast_admitted_sessions", "Sessions admitted by the server and not ended",
                              registry=r)
        self.tokens = Counter("cosyfast_tokens", "Speech tokens sent", registry=r)
        Gauge("cosyfast_tokens_per_second", f"Tokens sent per second over the last {self.WINDOW_S} s",
              registry=r).set_function(self.tokens_per_second)
        self.ttft = Histogram("cosyfast_time_to_first_token_seconds", "From admission to the first token",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.finished = Counter("cosyfast_sessions_finished", "Sessions ended, by finish reason", ["reason"],
                                registry=r)
        self.rejected = Counter("cosyfast_requests_rejected", "Requests refused, by cause", ["cause"],
                                registry=r)
        self._buckets: deque[list[int]] = deque()  # [second, tokens]
        self._lock = threading.Lock()

    def count_tokens(self, n: int) -> None:
        self.tokens.inc(n)
        now = int(time.monotonic())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([now, n])
            while self._buckets and self._buckets[0][0] <= now - self.WINDOW_S:
                self._buckets.popleft()

    def tokens_per_second(self) -> float:
        now = int(time.monotonic())
        with self._lock:
            # the current second is still filling: count the WINDOW_S seconds before it
            return sum(n for s, n in self._buckets if now - self.WINDOW_S <= s < now) / self.WINDOW_S


class Session:
    """One admitted request. Its stream is read on a thread of its own (the C++ read blocks with
    the GIL released), and the event loop takes whatever arrived since it last looked, so tokens
    that are ready together travel together."""

    def __init__(self, service: "Service", stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.service, self.stream, self._loop = service, stream, loop
        self.started = time.perf_counter()
        self.sent = 0
        self._items: list[int | None] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._pump, name="cosyfast-serve-pump", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        read = self.stream.next_event if self.stream.is_bistream else self.stream.next
        try:
            while True:
                item = read()
                self._post(item)
                if item is None:
                    break
        except BaseException as e:  # noqa: BLE001 - a failed read ends this session, reported to its client
            self._error = e
            self._post(None)
        finally:
            self.service._ended(self)

    def _post(self, item: int | None) -> None:
        with self._lock:
            self._items.append(item)
            wake = len(self._items) == 1  # the loop is woken once per batch, not per token
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop has closed: nobody reads this session any more
                pass

    async def batches(self) -> AsyncIterator[list[int]]:
        """Lists of tokens (NEED_TEXT among them on a bistream) until the stream ends."""
        while True:
            await self._ready.wait()
            with self._lock:
                items, self._items = self._items, []
                self._ready.clear()
            done = bool(items) and items[-1] is None
            tokens = [t for t in items if t is not None]
            real = sum(1 for t in tokens if t != NEED_TEXT)
            if real:
                if self.sent == 0:
                    self.service.metrics.ttft.observe(time.perf_counter() - self.started)
                self.sent += real
                self.service.metrics.count_tokens(real)
            if tokens:
                yield tokens
            if done:
                if self._error is not None:
                    raise RuntimeError(f"the session failed: {self._error}")
                return

    def summary(self) -> dict[str, Any]:
        return {"finish_reason": self.stream.finish_reason, "num_tokens": self.sent}

    def cancel(self) -> None:
        self.stream.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class Service:
    """A Model behind a bounded admission: at most `max_sessions` sessions at once; beyond it,
    and while draining, requests get 503 with Retry-After (nothing admitted is ever dropped)."""

    def __init__(self, model: Model, *, max_sessions: int = 256, retry_after_s: int = 1,
                 drain_timeout_s: float = 30.0, registry: CollectorRegistry | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
        self.model = model
        self.max_sessions = max_sessions
        self.retry_after_s = retry_after_s
        self.drain_timeout_s = drain_timeout_s
        self.metrics = Metrics(model, registry)
        self.draining = False
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start(self, raw: bytes | str, extra: dict[str, Any], *, bistream: bool = False) -> tuple[Session, dict]:
        """Admits and starts one request from its JSON body; returns the session and the body's
        `extra` fields (given with their defaults). Raises RequestError (4xx, or 503 when full)."""
        try:
            return self._start(parse_json(raw), extra, bistream)
        except RequestError as e:
            if e.status < 500:
                self.metrics.rejected.labels("invalid").inc()
            raise

    def _start(self, body: dict[str, Any], extra: dict[str, Any], bistream: bool) -> tuple[Session, dict]:
        ids = ID_FIELDS[1:] if bistream else ID_FIELDS
        ids_part, options, extras = split_body(body, ids, {**extra, "mix_ratio": [5, 15]} if bistream else extra)
        if not bistream and "text_ids" not in ids_part:
            raise RequestError(422, "text_ids is required: the text to speak, as token ids", "text_ids")
        with self._lock:
            if self.draining or len(self._sessions) >= self.max_sessions:
                cause = "draining" if self.draining else "full"
                self.metrics.rejected.labels(cause).inc()
                why = "the server is shutting down" if self.draining else \
                    f"the server is at its limit of {self.max_sessions} live sessions"
                raise RequestError(503, f"{why}; retry later", headers={"Retry-After": str(self.retry_after_s)})
            try:
                if bistream:
                    mix = extras.pop("mix_ratio")
                    stream = self.model.bistream(**ids_part, mix_ratio=tuple(mix), **options)
                else:
                    stream = self.model.stream(**ids_part, **options)
            except (ValueError, TypeError) as e:
                raise RequestError(422, str(e), field_of(str(e), tuple(ids_part) + tuple(options))) from None
            session = Session(self, stream, asyncio.get_running_loop())
            self._sessions.add(session)
        self.metrics.admitted.inc()
        return session, extras

    def _ended(self, session: Session) -> None:
        """Called by a session's pump when its stream has ended (any thread)."""
        with self._lock:
            self._sessions.discard(session)
        self.metrics.admitted.dec()
        self.metrics.finished.labels(session.stream.finish_reason or "error").inc()

    async def drain(self, timeout_s: float | None = None) -> int:
        """Stops admitting, lets live sessions finish up to the timeout, then cancels the rest.
        Returns how many were cancelled."""
        self.draining = True
        deadline = time.monotonic() + (self.drain_timeout_s if timeout_s is None else timeout_s)
        while self.admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._lock:
            left = list(self._sessions)
        for s in left:
            s.cancel()
        for s in left:  # cancelled sessions end at their scheduler's next round
            await asyncio.to_thread(s.join, 5.0)
        return len(left)

    def health(self) -> dict[str, Any]:
        return {"status": "draining" if self.draining else "ok", "engine": self.model.engine,
                "kind": self.model.kind, "live_sessions": self.model.live_sessions,
                "admitted_sessions": self.admitted, "max_sessions": self.max_sessions}

