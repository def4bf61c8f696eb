"""cosyfast as a streaming service: `cosyfast serve MODEL` (FastAPI + uvicorn), and a Ray Serve
deployment in `cosyfast.serve.ray`. Needs the `serve` extra: pip install ".[serve]" in a checkout."""
from __future__ import annotations

from .app import create_app
from .server import BackgroundServer, make_server
from .service import RequestError, Service

__all__ = ["BackgroundServer", "RequestError", "Service", "create_app", "make_server"]
