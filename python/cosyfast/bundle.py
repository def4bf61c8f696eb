"""Export a CosyVoice2/3 LLM as a CPU bundle: the files a C++ host needs to run it without Python.

Why: the C API (`include/cosyfast/c_api.h`) and the `cosyfast-host` and `cosyfast-load` programs
load a model with no torch and no pickle reader. So the checkpoint is read once here (with its
full validation) and written in a plain, documented, dependency-free form, which the C++ side
reads with a small JSON parser and a few lines of file I/O.

Format (version 1): a directory holding two files.

* ``config.json``::

      {"format": "cosyfast-cpu-bundle", "format_version": 1,
       "kind": "cosyvoice2" | "cosyvoice3", "source_sha256": "<sha256 of llm.pt>",
       "weights": "weights.safetensors",
       "model": {"num_hidden_layers", "hidden_size", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "intermediate_size",
                 "rms_norm_eps", "rope_theta"},
       "vocab": {"name", "speech_token_size", "decoder_rows", "eos", "stop_ids",
                 "fill_token", "required_text_id"}}

* ``weights.safetensors``: a standard safetensors file (an unsigned 64-bit little-endian header
  length N, an N-byte JSON header padded with spaces to a multiple of 8, then the raw data),
  every tensor float32 little-endian, row-major:

  ==================================  ===================================================
  text_embedding [text_vocab, H]      Qwen2 embed_tokens (prompt text and text rows)
  speech_embedding [decoder_rows, H]  prompt speech rows; also the engine's embed_tokens
  sos [H], task_id [H]                the rows around the text (resolved per version)
  decoder_weight [decoder_rows, H]    llm_decoder.weight: the engine's lm_head
  decoder_bias [decoder_rows]         llm_decoder.bias (CosyVoice2 only; the sampler adds it)
  layers.<i>.<name>                   Qwen2 layer i, Hugging Face names (checkpoint.LAYER_KEYS)
  norm [H]                            the final RMSNorm
  ==================================  ===================================================

  Its ``__metadata__`` repeats ``format`` and ``format_version``.

The bundle appears atomically: it is written into a temporary directory beside ``out_dir`` and
renamed into place, so a reader never sees a half-written one.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._paths import _installed

if TYPE_CHECKING:
    from .checkpoint import LlmWeights
# The checkpoint reader (and torch with it) is imported where it is used: the `cosyfast-host` and
# `cosyfast-load` commands only exec the programs, and start at once.

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "export_cpu_bundle", "host_program", "is_cpu_bundle",
           "load_program", "read_cpu_bundle", "write_safetensors"]

BUNDLE_FORMAT = "cosyfast-cpu-bundle"
BUNDLE_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
HOST_PROGRAM = "cosyfast-host"
LOAD_PROGRAM = "cosyfast-load"
_MODEL_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta")


def export_cpu_bundle(weights: LlmWeights | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      *, overwrite: bool = False) -> Path:
    """Write `weights` (an `LlmWeights`, or a checkpoint path for `load_checkpoint`) as a CPU
    bundle directory `out_dir`, and return its path.

    An existing `out_dir` raises FileExistsError unless `overwrite`; then the new bundle replaces
    it (the old one is moved aside, the new one renamed in, the old one deleted).
    """
    from .checkpoint import LlmWeights, load_checkpoint

    if not isinstance(weights, LlmWeights):
        weights = load_checkpoint(weights)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.mkdir()
        write_safetensors(tmp / WEIGHTS_NAME, _tensors(weights),
                          metadata={"format": BUNDLE_FORMAT, "format_version": str(BUNDLE_FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(_config(weights), indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_safetensors(path: str | os.PathLike[str], tensors: Iterator[tuple[str, np.ndarray]] | dict,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write float32 arrays as a safetensors file, streaming each array to disk.

    `tensors`: (name, array) pairs (or a dict), stored in that order; arrays are converted to
    C-contiguous little-endian float32.
    """
    items = list(tensors.items() if isinstance(tensors, dict) else tensors)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, arr in items:
        if name in header:
            raise ValueError(f"tensor name {name!r} is given twice")
        a = np.ascontiguousarray(arr, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data region starts 8-byte aligned
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(memoryview(a.reshape(-1)).cast("B"))
    return path


def host_program() -> Path:
    """The installed `cosyfast-host` executable (`$COSYFAST_HOST` overrides the search): one request
    on a bundle, its tokens on stdout."""
    return _installed_program(HOST_PROGRAM, "COSYFAST_HOST")


def load_program() -> Path:
    """The installed `cosyfast-load` executable (`$COSYFAST_LOAD` overrides the search): many
    concurrent streaming requests on a bundle, a JSON summary on stdout (the bench's `host` path)."""
    return _installed_program(LOAD_PROGRAM, "COSYFAST_LOAD")


def run_program(name: str, argv: list[str]) -> int:
    """Run the installed program `name` (cosyfast-host or cosyfast-load) with `argv`; its exit status."""
    program = host_program() if name == HOST_PROGRAM else load_program()
    sys.stdout.flush()
    # Replace this process, so that signals, stdin/stdout and the exit status are the program's own.
    os.execv(program, [name, *argv])
    return 1  # not reached


def host_main() -> int:
    """The `cosyfast-host` command on PATH (console entry point): the installed program."""
    return run_program(HOST_PROGRAM, sys.argv[1:])


def load_main() -> int:
    """The `cosyfast-load` command on PATH (console entry point): the installed program."""
    return run_program(LOAD_PROGRAM, sys.argv[1:])


def is_cpu_bundle(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a directory whose config.json says it is a cosyfast CPU bundle."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_cpu_bundle(path: str | os.PathLike[str]) -> LlmWeights:
    """The weights of a CPU bundle (what `export_cpu_bundle` wrote), so that `cosyfast.load(BUNDLE_DIR)`
    runs it as it runs the checkpoint it came from. Raises CheckpointError naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from .checkpoint import LAYER_KEYS, CheckpointError, LlmWeights

    path = Path(path)
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / CONFIG_NAME}: {e}") from None
    if config.get("format") != BUNDLE_FORMAT or config.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a {BUNDLE_FORMAT} version {BUNDLE_FORMAT_VERSION} "
                              f"(config.json says {config.get('format')!r} version {config.get('format_version')!r})")
    weights_path = path / str(config.get("weights", WEIGHTS_NAME))
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is not a regular file (the bundle's weights)")
    try:
        tensors = load_file(str(weights_path))
        model, vocab, kind = dict(config["model"]), dict(config["vocab"]), str(config["kind"])
        layers = [{name: tensors.pop(f"layers.{i}.{name}") for name in LAYER_KEYS}
                  for i in range(int(model["num_hidden_layers"]))]
        weights = LlmWeights(kind=kind, config=model, text_embedding=tensors.pop("text_embedding"),
                             speech_embedding=tensors.pop("speech_embedding"), sos=tensors.pop("sos"),
                             task_id=tensors.pop("task_id"), decoder_weight=tensors.pop("decoder_weight"),
                             decoder_bias=tensors.pop("decoder_bias", None), layers=layers,
                             norm=tensors.pop("norm"), vocab=vocab, source_hash=str(config["source_sha256"]),
                             source_path=path.resolve())
    except KeyError as e:
        raise CheckpointError(f"{path}: the bundle lacks {e.args[0]!r}") from None
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{weights_path}: cannot read the bundle's weights: {e}") from None
    for name, array in [("text_embedding", weights.text_embedding), ("decoder_weight", weights.decoder_weight)]:
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != model["hidden_size"]:
            raise CheckpointError(f"{weights_path}: {name} is {array.dtype} {list(array.shape)}, expected "
                                  f"float32 [rows, {model['hidden_size']}]")
    return weights


def _installed_program(name: str, env_var: str) -> Path:
    """`$env_var` if set, else the program `name` installed in the package, at `cosyfast/bin/<name>`."""
    env = os.environ.get(env_var)
    return Path(env) if env else _installed(f"bin/{name}") / name


# --- internals -------------------------------------------------------------------------------

def _config(w: LlmWeights) -> dict[str, Any]:
    model = {key: w.config[key] for key in _MODEL_KEYS}
    for key in ("rms_norm_eps", "rope_theta"):
        model[key] = float(model[key])
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": w.kind,
        "source_sha256": w.source_hash,
        "weights": WEIGHTS_NAME,
        "model": model,
        "vocab": {key: w.vocab[key] for key in ("name", "speech_token_size", "decoder_rows", "eos", "stop_ids",
                                                "fill_token", "required_text_id")},
    }


def _tensors(w: LlmWeights) -> Iterator[tuple[str, np.ndarray]]:
    from .checkpoint import LAYER_KEYS

    yield "text_embedding", w.text_embedding
    yield "speech_embedding", w.speech_embedding
    yield "sos", w.sos
    yield "task_id", w.task_id
    yield "decoder_weight", w.decoder_weight
    if w.decoder_bias is not None:
        yield "decoder_bias", w.decoder_bias
    for i, layer in enumerate(w.layers):
        for name in LAYER_KEYS:
            yield f"layers.{i}.{name}", layer[name]
    yield "norm", w.norm


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is moved aside first and deleted after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
