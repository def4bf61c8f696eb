"""Small filesystem helpers shared by the Python side: the cache root, atomic writes, and where
the installed package keeps what a C/C++ build needs (docs/cpp.md).

Everything cosyfast builds once and reuses (synthetic models, exported engine directories) lives
under one cache root so that a user can find and delete it in one place.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

__all__ = ["cache_root", "atomic_write", "include_dir", "library_dir", "cmake_dir", "pkgconfig_dir"]


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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`text` (UTF-8) into `path` through atomic_write: never half-written."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _installed(relative: str) -> Path:
    """The directory holding `relative` inside the installed package (cmake/package.cmake puts it
    there); in an editable install the package's directories are searched in order."""
    from . import __path__ as package_dirs

    for d in package_dirs:
        if (Path(d) / relative).is_file():
            return (Path(d) / relative).parent
    raise FileNotFoundError(f"{relative} was not found in the cosyfast package ({', '.join(package_dirs)}); "
                            "reinstall cosyfast (pip install .) to build it")


def include_dir() -> Path:
    """The directory to add to the include path: it holds cosyfast/c_api.h and cosyfast/cosyfast.hpp."""
    return _installed("include/cosyfast/c_api.h").parent


def library_dir() -> Path:
    """The directory of libcosyfast.so."""
    return _installed("lib/libcosyfast.so")


def cmake_dir() -> Path:
    """The directory of cosyfastConfig.cmake: `-Dcosyfast_DIR=` for `find_package(cosyfast)`."""
    return _installed("lib/cmake/cosyfast/cosyfastConfig.cmake")


def pkgconfig_dir() -> Path:
    """The directory of cosyfast.pc: add it to `PKG_CONFIG_PATH`."""
    return _installed("lib/pkgconfig/cosyfast.pc")
