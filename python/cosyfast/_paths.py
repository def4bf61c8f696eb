"""Small filesystem helpers shared by the Python side: the cache root and atomic writes.

Everything cosyfast builds once and reuses (synthetic models, exported engine directories) lives
under one cache root so that a user can find and delete it in one place.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

__all__ = ["cache_root", "atomic_write"]


def cache_root() -> Path:
    """`$COSYFAST_CACHE` if set, else `~/.cache/cosyfast` (not created here)."""
    env = os.environ.get("COSYFAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cosyfast"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`.

    Readers (or a crashed writer) never see a half-written file: the rename is atomic on one
    filesystem, and the temporary file is removed if `write` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp: mkstemp creates mode 0600, which would survive the rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
