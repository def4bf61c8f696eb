"""What the HTTP app, the CLI and the Ray deployment share: admission of sessions, request
bodies (parsed by the pydantic models of schema.py, then checked by the Python API's own
validation), the one token reader for every session, and the Prometheus metrics.

Tokens reach the event loop through one C++ TokenMux per loop: the engine's threads mark the
sessions that have news, the loop wakes once (a readable pipe) and takes every session's new
tokens in one call. No thread per session, no per-token hop into Python.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from typing import Any, AsyncIterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from pydantic import BaseModel, ValidationError

from .. import _core
from ..model import Model
from ..text import Tokenizer
from .schema import OPTION_FIELDS, BistreamStart, SpeechTokensRequest

ID_FIELDS = ("text_ids", "prompt_text_ids", "prompt_speech_tokens")
NEED_TEXT: int = _core.Stream.NEED_TEXT  # the event a bistream sends when it waits for text
DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB: a 4096-id request is ~40 kB of JSON
DEFAULT_IDLE_TIMEOUT_S = 60.0
# A stream's later tokens wait up to this long to go out together (its first ones go at once):
# 5 ms is an eighth of one speech token's audio (25 Hz), and takes most per-step writes off the loop.
DEFAULT_FLUSH_INTERVAL_S = 0.005
disable_created_metrics()  # no *_created series beside every counter and histogram


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


def _field_of_bad_id(message: str, ids: dict[str, list[int]]) -> str | None:
    """For "... id N is outside [0, R)": the one id field that holds an id outside that range
    (the core checks prompt text and text as one sequence, so its sentence cannot tell)."""
    m = re.search(r"outside \[0, (\d+)\)", message)
    if not m:
        return None
    rows = int(m[1])
    holders = [f for f, values in ids.items() if any(not 0 <= v < rows for v in values)]
    return holders[0] if len(holders) == 1 else None


def _whole_text_field(message: str, ids: dict[str, list[int]]) -> str | None:
    """For the core's sentences about the prompt as a whole: CosyVoice3's <|endofprompt|> belongs
    at the end of the prompt text; a prompt too long for the session is cut where it is longest."""
    if "needs the text to contain" in message:
        return "prompt_text_ids" if "prompt_text_ids" in ids else "text_ids"
    if message.startswith("the prompt has") and ids:
        return max(ids, key=lambda f: len(ids[f]))
    return None


def parse_body(model: type[BaseModel], raw: bytes | str) -> Any:
    """A request body as `model`: 400 for what is not a JSON object (or nests too deep), 422
    naming the field for a wrong type or an unknown field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise _validation_error(e) from None


def _validation_error(e: ValidationError) -> RequestError:
    err = e.errors(include_url=False)[0]
    kind, loc = err["type"], err["loc"]
    if kind == "json_invalid":
        why = err["msg"].removeprefix("Invalid JSON: ")
        if "recursion limit" in why:
            return RequestError(400, "the JSON is nested too deeply (messages nest 2 levels)")
        return RequestError(400, f"the body is not JSON: {why}")
    if not loc:
        return RequestError(400, f"the body must be a JSON object: {err['msg']}")
    field = str(loc[0])
    where = field + "".join(f"[{p}]" for p in loc[1:])
    if kind == "extra_forbidden":
        return RequestError(422, f"unknown field {field!r}", field)
    return RequestError(422, f"{where}: {err['msg']}", field)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several services per process),
    after vLLM's: latency histograms per request; rates are the counters' rate()."""

    LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, model: Model, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            try:
                r.register(collector)
            except ValueError:  # already there (the default registry)
                pass
        Gauge("cosyfast_live_sessions", "Requests started and not finished in the engine", registry=r
              ).set_function(lambda: model.live_sessions)
        self.admitted = Gauge("cosyfast_admitted_sessions", "Sessions admitted by the server and not ended",
                              registry=r)
        self.tokens = Counter("cosyfast_tokens", "Speech tokens sent", registry=r)
        self.ttft = Histogram("cosyfast_time_to_first_token_seconds", "From admission to the first token",
                              buckets=self.LATENCY, registry=r)
        self.itl = Histogram("cosyfast_inter_token_latency_seconds",
                             "Between one session's consecutive deliveries of tokens (tokens that go together count once)",
                             buckets=self.LATENCY, registry=r)
        self.request_tokens = Histogram("cosyfast_request_tokens", "Speech tokens per finished request",
                                        buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000), registry=r)
        self.duration = Histogram("cosyfast_request_duration_seconds", "From admission to the end of the session",
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.finished = Counter("cosyfast_sessions_finished", "Sessions ended, by finish reason", ["reason"],
                                registry=r)
        self.rejected = Counter("cosyfast_requests_rejected", "Requests refused, by cause", ["cause"],
                                registry=r)


class Session:
    """One admitted request. The dispatcher hands it news on the event loop's thread; its reader
    (the HTTP response or the WebSocket) takes everything that arrived since it last looked, so
    tokens that are ready together travel together."""

    def __init__(self, service: "Service", stream: Any, key: int) -> None:
        self.service, self.stream, self.key = service, stream, key
        self.started = self.last = time.perf_counter()
        self.received = self.started  # when its request reached the handler (Service.start's caller says)
        self.submitted = self.started  # when the engine was handed the request (Service._start says)
        self.first_delivered: float | None = None  # when its first tokens went out
        self.sent = 0
        self.done = False
        self.waits_for_text = False  # a bistream asked for text and none has come since
        self._items: list[int] = []
        self._fresh = False  # tokens arrived since the last delivery
        self._waiter: asyncio.Future[None] | None = None

    def news(self, tokens: list[int], need_text: bool, finished: bool, now: float) -> bool:
        """From the dispatcher (event loop thread): new tokens, a request for text, the end.
        Returns whether the reader must see them now (the first tokens, a request for text, the
        end) rather than at the dispatcher's next flush."""
        urgent = need_text or finished
        if tokens:
            urgent = urgent or not self.sent
            self.sent += len(tokens)
            self._items += tokens
            self._fresh = True
        if need_text:
            self._items.append(NEED_TEXT)
            self.waits_for_text = True
        if finished:
            self.done = True
        return urgent

    def flush(self, now: float) -> None:
        """Delivers what arrived: wakes the reader (event loop thread). The latency metrics count
        deliveries, what a client sees, once each (not every engine step's news)."""
        if self._fresh:
            metrics = self.service.metrics
            if self.first_delivered is None:
                metrics.ttft.observe(now - self.last)
                self.first_delivered = now
            else:
                metrics.itl.observe(now - self.last)
            self.last, self._fresh = now, False
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def batches(self) -> AsyncIterator[list[int]]:
        """Lists of tokens (NEED_TEXT among them on a bistream) until the stream ends; raises
        RuntimeError if the session failed."""
        while True:
            if not self._items and not self.done:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            if self._items:
                items, self._items = self._items, []
                yield items
                continue
            if self.stream.finish_reason == "error":
                raise RuntimeError(f"the session failed: {self.stream.error}")
            return

    @property
    def drained(self) -> bool:
        """The stream has ended and its reader has taken every token: only the summary is left."""
        return self.done and not self._items

    def summary(self) -> dict[str, Any]:
        return {"finish_reason": self.stream.finish_reason, "num_tokens": self.sent}

    def cancel(self) -> None:
        self.stream.cancel()


class _Dispatcher:
    """One TokenMux on one event loop: every session's tokens, one wake per batch of news.

    A session's first tokens, a bistream's request for text and the end reach its reader at once;
    later tokens wait up to the service's flush_interval_s and go together. Waking a reader and
    writing its chunk is the event loop's main cost per token, once per session per engine step:
    at tens of sessions that kept the loop so busy that new requests queued behind the writes
    (their first token late) and the HTTP throughput fell behind the engine's."""

    def __init__(self, service: "Service", loop: asyncio.AbstractEventLoop) -> None:
        self.service, self.loop = service, loop
        self.mux = _core.TokenMux()
        self.sessions: dict[int, Session] = {}
        self._pending: set[Session] = set()
        self._flush_timer: asyncio.TimerHandle | None = None
        loop.add_reader(self.mux.fd, self._ready)

    def add(self, session: Session) -> None:
        self.sessions[session.key] = session
        self.mux.add(session.key, session.stream)

    def _ready(self) -> None:
        news = self.mux.collect()
        now = time.perf_counter()
        total = 0
        interval = self.service.flush_interval_s
        for key, tokens, need_text, finished in news:
            session = self.sessions[key]
            total += len(tokens)
            if session.news(tokens, need_text, finished, now) or not interval:
                session.flush(now)
                self._pending.discard(session)
            else:
                self._pending.add(session)
            if finished:
                del self.sessions[key]
                self.service._ended(session, now)
        if total:
            self.service.metrics.tokens.inc(total)
        if self._pending and self._flush_timer is None:
            self._flush_timer = self.loop.call_later(interval, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        pending, self._pending = self._pending, set()
        now = time.perf_counter()
        for session in pending:
            session.flush(now)

    def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self._flush()
        if not self.loop.is_closed():
            self.loop.remove_reader(self.mux.fd)


class Service:
    """A Model behind a bounded admission: at most `max_sessions` sessions at once; beyond it,
    and while draining, requests get 503 with Retry-After (nothing admitted is ever dropped).
    `max_body_bytes` bounds a request body and a WebSocket message; `idle_timeout_s` how long a
    client may take to send a body, a bistream's first message, or the text its session waits
    for (the session is freed then); `flush_interval_s` how long a stream's later tokens may wait
    to go out together (its first tokens, a request for text and the end go at once; 0: each
    engine step's tokens at once); `tokenizer` (cosyfast.text) serves the `text` and
    `prompt_text` fields."""

    def __init__(self, model: Model, *, max_sessions: int = 256, retry_after_s: int = 1,
                 drain_timeout_s: float = 30.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 tokenizer: Tokenizer | None = None, no_tokenizer_reason: str = "none was given",
                 registry: CollectorRegistry | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
        if max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {max_body_bytes}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        if not 0 <= flush_interval_s <= 1:
            raise ValueError(f"flush_interval_s must be in [0, 1] seconds, got {flush_interval_s}")
        self.idle_timeout_s = idle_timeout_s
        self.flush_interval_s = flush_interval_s
        self.model = model
        self.max_sessions = max_sessions
        self.retry_after_s = retry_after_s
        self.drain_timeout_s = drain_timeout_s
        self.max_body_bytes = max_body_bytes
        self.tokenizer, self.no_tokenizer_reason = tokenizer, no_tokenizer_reason
        self.metrics = Metrics(model, registry)
        self.draining = False
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._dispatcher: _Dispatcher | None = None
        # The bench's view of where a first token's time goes: when set to a list, every ended
        # session appends its timeline (perf_counter seconds: received by the handler, admitted =
        # handed to the engine (TurboMind: queued for its starter thread), engine_first,
        # first_delivered to the response; engine_first needs _core._record_arrivals on when the
        # session started).
        self.timelines: list[dict[str, float | None]] | None = None

    @property
    def admitted(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start(self, raw: bytes | str, *, bistream: bool = False, received: float | None = None) -> tuple[Session, Any]:
        """Admits and starts one request from its JSON body; returns the session and the parsed
        body. Raises RequestError (4xx, or 503 when full or draining). `received`: when the
        request reached the caller (time.perf_counter), for the session's timeline."""
        try:
            body = parse_body(BistreamStart if bistream else SpeechTokensRequest, raw)
            session = self._start(body, bistream)
            if received is not None:
                session.received = received
            return session, body
        except RequestError as e:
            if e.status < 500:
                self.metrics.rejected.labels("invalid").inc()
            raise

    def _start(self, body: Any, bistream: bool) -> Session:
        ids = {f: getattr(body, f) or [] for f in ID_FIELDS if hasattr(body, f)}
        options = {k: getattr(body, k) for k in OPTION_FIELDS if k in body.model_fields_set}
        for f in ("text", "prompt_text"):
            value = getattr(body, f, None)
            if value is not None:
                ids[f + "_ids"] = self.encode(f, value, getattr(body, f + "_ids", None))
        if not bistream and body.text_ids is None and body.text is None:
            raise RequestError(422, "text_ids (or text) is required: the text to speak", "text_ids")
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.draining or len(self._sessions) >= self.max_sessions:
                cause = "draining" if self.draining else "full"
                self.metrics.rejected.labels(cause).inc()
                why = "the server is shutting down" if self.draining else \
                    f"the server is at its limit of {self.max_sessions} live sessions"
                raise RequestError(503, f"{why}; retry later", headers={"Retry-After": str(self.retry_after_s)})
            submitted = time.perf_counter()  # the engine's clock for the session starts about here
            try:
                if bistream:
                    stream = self.model.bistream(ids["prompt_text_ids"], ids["prompt_speech_tokens"],
                                                 mix_ratio=tuple(body.mix_ratio), **options)
                else:
                    stream = self.model.stream(**ids, **options)
            except (ValueError, TypeError) as e:
                msg = str(e)
                field = _field_of_bad_id(msg, ids)
                if field is not None and field_of(msg, (field,)) is None:
                    msg = f"{field}: {msg}"  # the core's sentence names the whole text
                field = field or field_of(msg, tuple(ids) + tuple(options) + ("mix_ratio",)) or _whole_text_field(msg, ids)
                if field in ("text_ids", "prompt_text_ids") and getattr(body, field.removesuffix("_ids"), None) is not None:
                    field = field.removesuffix("_ids")  # the client gave it as a string
                raise RequestError(422, msg, field) from None
            dispatcher = self._dispatcher_for(loop)
            session = Session(self, stream, next(self._keys))
            session.submitted = submitted
            self._sessions.add(session)
            dispatcher.add(session)
        self.metrics.admitted.inc()
        return session

    def encode(self, field: str, text: str, ids: list[int] | None = None) -> list[int]:
        """A text field's ids by the model's tokenizer (422 naming `field` without one, or when
        the ids are given as well)."""
        if ids is not None:
            raise RequestError(422, f"{field}: give {field} or {field}_ids, not both", field)
        if self.tokenizer is None:
            raise RequestError(422, f"{field}: this model has no tokenizer ({self.no_tokenizer_reason}); give "
                               f"{field}_ids", field)
        return self.tokenizer.encode(text)

    def _dispatcher_for(self, loop: asyncio.AbstractEventLoop) -> _Dispatcher:
        d = self._dispatcher
        if d is None or d.loop is not loop:
            if d is not None and d.sessions and not d.loop.is_closed():
                raise RuntimeError("a Service serves one event loop at a time")
            if d is not None:
                d.close()
            d = self._dispatcher = _Dispatcher(self, loop)
        return d

    def _ended(self, session: Session, now: float) -> None:
        """Called by the dispatcher when a session's stream has ended (event loop thread)."""
        with self._lock:
            self._sessions.discard(session)
        m = self.metrics
        m.admitted.dec()
        m.finished.labels(session.stream.finish_reason or "error").inc()
        m.request_tokens.observe(session.sent)
        m.duration.observe(now - session.started)
        if self.timelines is not None:
            arrivals = session.stream.arrival_seconds
            # arrivals count from the core's start of the session, a little after `submitted`: so
            # engine_first is at most the true moment, never after the delivery
            self.timelines.append({"received": session.received, "admitted": session.submitted,
                                   "engine_first": session.submitted + arrivals[0] if len(arrivals) else None,
                                   "first_delivered": session.first_delivered})

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
        deadline = time.monotonic() + 5.0  # cancelled sessions end at their scheduler's next round
        while self.admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return len(left)

    def health(self) -> dict[str, Any]:
        return {"status": "draining" if self.draining else "ok", "engine": self.model.engine,
                "kind": self.model.kind, "live_sessions": self.model.live_sessions,
                "admitted_sessions": self.admitted, "max_sessions": self.max_sessions}
