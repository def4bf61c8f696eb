"""Running the app: `cosyfast serve` (uvicorn, graceful shutdown) and a loopback server on a
thread for tests and the benchmark."""
from __future__ import annotations

import argparse
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn

from ..model import DEFAULTS
from ..text import NoTokenizer, Tokenizer, load_tokenizer
from .app import create_app
from .service import DEFAULT_FLUSH_INTERVAL_S, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, Service


class DrainingServer(uvicorn.Server):
    """uvicorn whose shutdown first drains the service: new requests get 503 while live streams
    finish (up to the service's drain timeout); streams still live then are cancelled and end
    with finish_reason "cancelled", and only then do connections close."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        cancelled = await self.service.drain()
        if cancelled:
            logging.getLogger("cosyfast.serve").warning("cancelled %d live session(s) at shutdown", cancelled)
        await super().shutdown(sockets)


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000, **config: Any) -> DrainingServer:
    # The drain above bounds the wait; uvicorn's own timeout is only a backstop for the rest.
    # WebSocket frames are bounded as bodies are, and so is the queue of frames a connection has
    # not yet read: a connection holds at most ws_max_queue * max_body_bytes of client data.
    config.setdefault("ws_max_size", service.max_body_bytes)
    config.setdefault("ws_max_queue", 4)
    cfg = uvicorn.Config(create_app(service), host=host, port=port, timeout_graceful_shutdown=5,
                         log_level=config.pop("log_level", "info"), **config)
    return DrainingServer(cfg, service)


class BackgroundServer:
    """A server on a thread of its own, bound to a free loopback port: `with BackgroundServer(s) as url:`."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.server = make_server(service, host, port, log_level=config.pop("log_level", "warning"), **config)
        self._thread = threading.Thread(target=self.server.run, name="cosyfast-serve", daemon=True)
        self.service = service
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()
        for _ in range(1000):  # 10 s: the app is built already, so binding is all that is left
            if self.server.started or not self._thread.is_alive():
                break
            self._thread.join(0.01)
        if not self.server.started:
            raise RuntimeError("the server did not start (see its log above)")
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, unless the help says it in words (a default that depends)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosyfast serve", formatter_class=_Defaults,
                                description="The LLM stage as a streaming HTTP service (POST /v1/speech_tokens, "
                                "WS /v1/speech_tokens/bistream, /health, /metrics, /docs). Without MODEL it serves "
                                "the synthetic demo model (random weights, with a demo tokenizer).")
    p.add_argument("model", nargs="?", default=None,
                   help="a CosyVoice2/3 llm.pt or model directory (without it: the demo model of --demo-kind)")
    p.add_argument("--demo-kind", default="cosyvoice2", choices=["cosyvoice2", "cosyvoice3"],
                   help="the demo model's kind, without MODEL")
    p.add_argument("--engine", default="auto", choices=["auto", "cpu", "turbomind"],
                   help="auto: turbomind where a GPU and that engine are present, else cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-sessions", type=int, default=256,
                   help="live sessions admitted at once; beyond it requests get 503 with Retry-After")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds live streams may finish in at shutdown before they are cancelled")
    p.add_argument("--max-body-size", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="BYTES",
                   help="largest request body or WebSocket message; larger ones get 413 / close 1009")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                   help="seconds a client may take to send a body, a bistream's first message, or the text its "
                        "session waits for; then 408 / close 1008 and the session is freed")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="a log line per request (uvicorn's access log); each costs the event loop ~50 us, a fifth "
                        "of a short request's time on it (2-core CPU box): --no-access-log for the lowest first-token "
                        "latency under bursts")
    p.add_argument("--flush-ms", type=float, default=DEFAULT_FLUSH_INTERVAL_S * 1e3, metavar="MS",
                   help="how long a stream's later tokens may wait to go out together (its first tokens go at "
                        "once); 0 writes every engine step's tokens at once, at more CPU per token")
    g = p.add_argument_group("engine (the options of cosyfast.load)")
    g.add_argument("--max-batch", type=int, default=None, help="engine batch (default: max(256, --max-sessions))")
    g.add_argument("--max-session-len", type=int, default=DEFAULTS["max_session_len"],
                   help="longest session (prompt + speech tokens)")
    g.add_argument("--replicas", type=int, default=None,
                   help="engine instances (default: 1 per GPU on turbomind, 1 on cpu)")
    g.add_argument("--lanes", type=int, default=None,
                   help=f"cpu engine: scheduler lanes per replica (default: {DEFAULTS['lanes']})")
    g.add_argument("--sample-threads", type=int, default=None,
                   help=f"cpu engine: sampling helpers per lane (default: {DEFAULTS['sample_threads']})")
    g.add_argument("--devices", default=None, help="turbomind: comma list of GPU ids the replicas are spread over")
    g.add_argument("--gpu-memory", type=float, default=None,
                   help="turbomind: GPU memory budget per GPU, GB (or a fraction <= 1 of the GPU); default: what "
                        "max-batch sessions of max-session-len need")
    g.add_argument("--table-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the prompt tables' type in host memory")
    return p


def main(argv: list[str] | None = None) -> int:
    """`cosyfast serve [MODEL] [options]`."""
    args = parser().parse_args(argv)
    from .. import load
    from ..synthetic import ensure_default_model

    path = Path(args.model) if args.model else ensure_default_model(kind=args.demo_kind)
    devices = [int(d) for d in args.devices.split(",")] if args.devices else None
    extra = {} if args.gpu_memory is None else {"gpu_memory": args.gpu_memory}
    model = load(path, engine=args.engine, max_batch=args.max_batch or max(256, args.max_sessions),
                 max_session_len=args.max_session_len, replicas=args.replicas, lanes=args.lanes,
                 sample_threads=args.sample_threads, devices=devices, table_dtype=args.table_dtype, **extra)
    tokenizer, why = tokenizer_for(path, model.kind)
    service = Service(model, max_sessions=args.max_sessions, drain_timeout_s=args.drain_timeout,
                      max_body_bytes=args.max_body_size, idle_timeout_s=args.idle_timeout,
                      flush_interval_s=args.flush_ms / 1e3, tokenizer=tokenizer,
                      no_tokenizer_reason=why)
    print(f"cosyfast serve: {model.kind} on {model.engine} ({'demo model' if not args.model else path}), "
          f"text {'by ' + str(tokenizer.source) if tokenizer else 'as ids only: ' + why}, at most "
          f"{args.max_sessions} sessions, http://{args.host}:{args.port}", flush=True)
    try:
        make_server(service, args.host, args.port, access_log=args.access_log).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down (drained) cleanly
        pass
    finally:
        model.close()
    return 0


def tokenizer_for(path: Path, kind: str) -> tuple[Tokenizer | None, str]:
    """The model directory's tokenizer, or None and why not."""
    try:
        return load_tokenizer(path, kind), ""
    except NoTokenizer:
        return None, f"{path} has no tokenizer"
    except ImportError:
        return None, "the tokenizers package is not installed (pip install tokenizers)"
