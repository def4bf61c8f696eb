"""cosyfast on Ray Serve: replicas that each hold one Model (one GPU, or the CPU) behind the same
HTTP API as `cosyfast serve`, streamed through Ray Serve's HTTP proxy.

Python:  serve.run(cosyfast.serve.ray.app("CosyVoice2-0.5B/", engine="turbomind", max_replicas=8))
CLI:     serve run cosyfast.serve.ray:build model=CosyVoice2-0.5B/ engine=turbomind max_replicas=8

Autoscaling follows live sessions: every session is one request that Serve counts as ongoing
until its last token is sent (streams and WebSockets alike), so `target_ongoing_requests` is a
target of live sessions per replica. docs/serve.md covers multi-node clusters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from .app import create_app
from .service import Service


@serve.deployment(name="cosyfast")
@serve.ingress()
class CosyfastReplica:
    """One Model behind one Service; Ray calls `__serve_build_asgi_app__` once the model is loaded."""

    def __init__(self, model: str, engine: str, max_sessions: int, drain_timeout_s: float,
                 load_options: dict[str, Any]) -> None:
        from .. import load
        from .server import tokenizer_for

        self.model = load(model, engine=engine, **load_options)
        tokenizer, why = tokenizer_for(Path(model), self.model.kind)
        self.service = Service(self.model, max_sessions=max_sessions, drain_timeout_s=drain_timeout_s,
                               tokenizer=tokenizer, no_tokenizer_reason=why)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.service)

    def __del__(self) -> None:
        # Ray runs the app's shutdown (the drain) before this; the engines go with the model.
        self.model.close()


def app(model: str, *, engine: str = "auto", max_sessions: int = 64, min_replicas: int = 1,
        max_replicas: int = 1, target_sessions: float | None = None, num_gpus: float | None = None,
        num_cpus: float = 1, drain_timeout_s: float = 30.0, **load_options: Any) -> Application:
    """The deployment, bound to a model path every node can read.

    Each replica takes `num_gpus` GPUs (default: 1 with engine="turbomind", else 0) and admits
    `max_sessions` sessions; Serve queues at most `max_sessions` more per replica and answers 503
    beyond that. Replicas scale between min_replicas and max_replicas to keep about
    `target_sessions` live sessions each (default: 3/4 of max_sessions). `load_options` go to
    `cosyfast.load` (replicas, lanes, max_batch, ...)."""
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {min_replicas} and {max_replicas}")
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
    target = target_sessions if target_sessions is not None else max(1.0, 0.75 * max_sessions)
    gpus = num_gpus if num_gpus is not None else (1 if engine == "turbomind" else 0)
    deployment = CosyfastReplica.options(
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": target},
        max_ongoing_requests=max_sessions,
        max_queued_requests=max_sessions,
        graceful_shutdown_timeout_s=drain_timeout_s + 5,
        ray_actor_options={"num_gpus": gpus, "num_cpus": num_cpus},
    )
    return deployment.bind(model, engine, max_sessions, drain_timeout_s, load_options)


_INT_ARGS = ("max_sessions", "min_replicas", "max_replicas", "replicas", "lanes", "sample_threads", "max_batch",
             "max_session_len")
_FLOAT_ARGS = ("target_sessions", "num_gpus", "num_cpus", "drain_timeout_s")


def build(args: dict[str, str]) -> Application:
    """The builder for `serve run cosyfast.serve.ray:build model=PATH key=value ...` and Serve
    config files (`import_path: cosyfast.serve.ray:build`, `args: {model: PATH, ...}`)."""
    options: dict[str, Any] = dict(args)
    if "model" not in options:
        raise ValueError("give the model: serve run cosyfast.serve.ray:build model=PATH [engine=turbomind ...]")
    for k in _INT_ARGS:
        if k in options:
            options[k] = int(options[k])
    for k in _FLOAT_ARGS:
        if k in options:
            options[k] = float(options[k])
    return app(options.pop("model"), **options)
