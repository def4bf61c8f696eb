"""Read and validate a CosyVoice2/3 `llm.pt` into float32 numpy tables for the C++ core.

Why this module exists: `llm.pt` is a bare state dict. It does not say which CosyVoice version it
is, nor how many attention heads the Qwen2 stack has, and a wrong guess would only show up later
as garbage speech. So the layout is detected from keys and shapes, the dimensions come from the
`CosyVoice-BlankEN/config.json` beside it, and every key and shape is checked here, once, with an
error that names the first problem. Later stages (export, the C++ core) trust `LlmWeights`.

Layouts (as upstream CosyVoice's `cosyvoice/llm/llm.py` builds and loads them):

* CosyVoice2 (`Qwen2LM`): `llm_embedding` [2,H] holds sos (row 0) and task_id (row 1);
  `speech_embedding` and `llm_decoder` have 6564 rows; the decoder has a bias.
* CosyVoice3 (`CosyVoice3LM`): no `llm_embedding`; sos/eos/task_id/fill are speech rows
  6561/6562/6563/6564 of a 6761-row `speech_embedding`; the decoder has 6761 rows and no bias.

A CosyVoice3 checkpoint that carries an `llm_decoder.bias` is rejected: upstream builds that
decoder with `bias=False` and loads `llm.pt` with `strict=True`, so such a file would not load
there either, and silently dropping (or adding) a bias would change every logit.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _core

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "LlmWeights",
    "LAYER_KEYS",
    "TEXT_VOCAB",
    "SPEECH_TOKEN_SIZE",
    "ENDOFPROMPT_ID",
    "expected_shapes",
    "load_checkpoint",
    "weights_from_state_dict",
    "file_sha256",
]

TEXT_VOCAB = 151936        # Qwen2 text vocabulary (CosyVoice-BlankEN)
SPEECH_TOKEN_SIZE = 6561   # speech codebook size, both versions
ENDOFPROMPT_ID = 151646    # <|endofprompt|>: CosyVoice3 requires it in the text
CONFIG_RELPATH = Path("CosyVoice-BlankEN") / "config.json"
QWEN = "llm.model.model."
LM_HEAD = "llm.model.lm_head.weight"  # tied to embed_tokens and never used by CosyVoice
GUESSED_HEAD_DIM = 64                 # Qwen2-0.5B's; only used when no config.json is found
# Trained weights are far smaller; past this a float32 forward overflows to inf and NaN, which
# would surface only as a failed or silently greedy generation (the C++ bundle reader agrees).
MAX_WEIGHT = 1e6
_F32_MAX = float(np.finfo(np.float32).max)

# Per-layer keys (relative to `llm.model.model.layers.{i}.`), in Hugging Face module order.
# A decoder layer's tensors (Hugging Face names without "model.layers.N.", checkpoint order): the
# C++ core's one description of the model (engines/cpu_qwen2.h), which its readers use too.
LAYER_KEYS: tuple[str, ...] = tuple(_core.QWEN2_LAYER_TENSORS)
_LAYER_RE = re.compile(r"^llm\.model\.model\.layers\.(\d+)\.")
# Keys that may appear and are deliberately not loaded (the tied lm_head; old HF RoPE buffers).
_IGNORED_RE = re.compile(
    r"^llm\.model\.(lm_head\.weight|model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq)$")


class CheckpointError(ValueError):
    """The file is not a usable CosyVoice2/3 LLM checkpoint; the message names the first problem."""


class CheckpointWarning(UserWarning):
    """Something was guessed or ignored while loading (e.g. heads inferred without config.json)."""


@dataclass(frozen=True)
class _Layout:
    kind: str
    speech_rows: int
    has_llm_embedding: bool  # CV2: sos/task_id live in llm_embedding; CV3: in speech_embedding
    decoder_bias: bool
    eos: int
    stop_ids: tuple[int, ...]
    fill_token: int
    required_text_id: int


_LAYOUTS: dict[str, _Layout] = {
    "cosyvoice2": _Layout("cosyvoice2", 6564, True, True, 6561, (6561, 6562, 6563), 6563, -1),
    "cosyvoice3": _Layout("cosyvoice3", 6761, False, False, 6562, tuple(range(6561, 6761)), 6564,
                          ENDOFPROMPT_ID),
}
_CV3_SOS, _CV3_TASK = SPEECH_TOKEN_SIZE, SPEECH_TOKEN_SIZE + 2  # speech rows 6561, 6563


@dataclass(repr=False)
class LlmWeights:
    """Everything the C++ core and the exporter need, as float32 C-contiguous numpy arrays.

    `sos`/`task_id` are the embedding rows the prompt starts and ends its text part with; they
    are resolved here so downstream code does not care which version it runs.
    """

    kind: str
    config: dict[str, Any]
    text_embedding: np.ndarray          # [text_vocab, H]: 151936 rows, more with added tokens
    speech_embedding: np.ndarray        # [decoder_rows, H]
    sos: np.ndarray                     # [H]
    task_id: np.ndarray                 # [H]
    decoder_weight: np.ndarray          # [decoder_rows, H]
    decoder_bias: np.ndarray | None     # [decoder_rows] (CV2) or None (CV3)
    layers: list[dict[str, np.ndarray]]  # keys: LAYER_KEYS
    norm: np.ndarray                    # [H]
    vocab: dict[str, Any]
    source_hash: str                    # sha256 of llm.pt: the export cache key
    source_path: Path                   # resolved path of llm.pt

    def padded_vocab(self, multiple: int = 64) -> int:
        """Decoder rows rounded up to `multiple` (the engine's vocab): CV2 6592, CV3 6784."""
        if multiple <= 0:
            raise ValueError(f"multiple must be positive, got {multiple}")
        return -(-self.vocab["decoder_rows"] // multiple) * multiple

    def __repr__(self) -> str:
        c = self.config
        return (f"LlmWeights(kind={self.kind!r}, layers={c['num_hidden_layers']}, "
                f"hidden={c['hidden_size']}, heads={c['num_attention_heads']}/"
                f"{c['num_key_value_heads']}, decoder_rows={self.vocab['decoder_rows']}, "
                f"source={str(self.source_path)!r}, sha256={self.source_hash[:12]})")


def expected_shapes(kind: str, config: Mapping[str, Any],
                    text_vocab: int = TEXT_VOCAB) -> dict[str, tuple[int, ...]]:
    """Every key `llm.pt` must hold for `kind`, with its shape, in canonical (upstream) order.

    `config` needs hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
    intermediate_size and optionally head_dim. Shared with `synthetic` so that the model it
    writes and the checks made here cannot drift apart.
    """
    lay = _layout(kind)
    h, n_layers = config["hidden_size"], config["num_hidden_layers"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    # Only the sizes matter for shapes; the C++ spec reads a whole normalised config.
    spec_config = {**config, "head_dim": hd, "rms_norm_eps": config.get("rms_norm_eps") or 1e-6,
                   "rope_theta": config.get("rope_theta") or 1e6}
    per_layer = {name: tuple(shape) for name, shape in _core.qwen2_layer_shapes(spec_config).items()}
    shapes: dict[str, tuple[int, ...]] = {}
    if lay.has_llm_embedding:
        shapes["llm_embedding.weight"] = (2, h)
    shapes[QWEN + "embed_tokens.weight"] = (text_vocab, h)
    for i in range(n_layers):
        for name in LAYER_KEYS:
            shapes[f"{QWEN}layers.{i}.{name}"] = per_layer[name]
    shapes[QWEN + "norm.weight"] = (h,)
    shapes["llm_decoder.weight"] = (lay.speech_rows, h)
    if lay.decoder_bias:
        shapes["llm_decoder.bias"] = (lay.speech_rows,)
    shapes["speech_embedding.weight"] = (lay.speech_rows, h)
    return shapes


def load_checkpoint(path: str | os.PathLike[str],
                    config: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> LlmWeights:
    """Load `llm.pt` (a file, or a model directory holding one) and validate it completely.

    Dimensions come from `config` if given (a dict or a config.json path), else from
    `CosyVoice-BlankEN/config.json` in the model directory (the file's own directory when `path`
    is a file), else they are inferred (head_dim 64 assumed) with a `CheckpointWarning`.
    Raises `CheckpointError` naming the first missing key, wrong shape or inconsistency.
    A CPU bundle directory (`cosyfast export-bundle`) is read as the weights it holds.
    """
    from .bundle import is_cpu_bundle, read_cpu_bundle

    if Path(path).is_dir() and is_cpu_bundle(path):
        return read_cpu_bundle(path)
    ckpt, model_dir = _resolve(Path(path))
    state = _read_state_dict(ckpt)
    lay = _detect_layout(state, ckpt)
    cfg, cfg_src = _resolve_config(state, config, model_dir, ckpt)
    expected = expected_shapes(lay.kind, cfg, _text_vocab(state, lay, ckpt))
    _validate(state, expected, lay, cfg, cfg_src, ckpt)
    _require_fits_file(state, expected, ckpt)

    # Drop what is not loaded first, then pop tensors as they are converted: a bf16 original is
    # freed as soon as its float32 copy exists, and float32 tensors are shared, not copied.
    for key in [k for k in state if k not in expected]:
        del state[key]

    def take(key: str) -> np.ndarray:
        return _to_f32(state.pop(key), key, ckpt)

    emb = take("llm_embedding.weight") if lay.has_llm_embedding else None
    text = take(QWEN + "embed_tokens.weight")
    layers = [{name: take(f"{QWEN}layers.{i}.{name}") for name in LAYER_KEYS}
              for i in range(cfg["num_hidden_layers"])]
    norm = take(QWEN + "norm.weight")
    dec_w = take("llm_decoder.weight")
    dec_b = take("llm_decoder.bias") if lay.decoder_bias else None
    speech = take("speech_embedding.weight")
    sos, task = (emb[0], emb[1]) if emb is not None else (speech[_CV3_SOS], speech[_CV3_TASK])
    sos, task = sos.copy(), task.copy()  # own rows, not views that pin a whole table

    vocab = _vocab(lay)
    return LlmWeights(kind=lay.kind, config=cfg, text_embedding=text, speech_embedding=speech,
                      sos=sos, task_id=task, decoder_weight=dec_w, decoder_bias=dec_b,
                      layers=layers, norm=norm, vocab=vocab, source_hash=file_sha256(ckpt),
                      source_path=ckpt.resolve())


def _vocab(lay: Any) -> dict[str, Any]:
    """The speech-vocabulary facts of a layout, as the C++ core takes them."""
    return {
        "name": lay.kind,
        "speech_token_size": SPEECH_TOKEN_SIZE,
        "decoder_rows": lay.speech_rows,
        "eos": lay.eos,
        "stop_ids": list(lay.stop_ids),
        "fill_token": lay.fill_token,
        "required_text_id": lay.required_text_id,
    }


def weights_from_state_dict(state: Mapping[str, Any], config: Mapping[str, Any],
                            source: str = "state_dict") -> LlmWeights:
    """`LlmWeights` from weights already in memory: a loaded Qwen2LM / CosyVoice3LM's
    `state_dict()` and its Qwen2 config (`module.llm.model.config.to_dict()`), so that a running
    CosyVoice need not read `llm.pt` a second time.

    Checked exactly as `load_checkpoint` checks a file; `source` names the weights in errors.
    Tensors may live on any device in any float dtype; float32 CPU tensors are shared, not
    copied. `source_hash` (the export cache key) is a sha256 of every loaded tensor's name,
    shape and float32 bytes, so the same weights give the same key whatever file they came from.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a Qwen2 config dict), got {type(config).__name__}")
    label = Path(source)
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    lay = _detect_layout(state, label)
    cfg = _normalize_config(config, f"{source} config", state)
    expected = expected_shapes(lay.kind, cfg, _text_vocab(state, lay, label))
    _validate(state, expected, lay, cfg, f"{source} config", label)

    digest = hashlib.sha256()

    def take(key: str) -> np.ndarray:
        arr = _to_f32(state[key], key, label)
        digest.update(f"{key}:{list(arr.shape)};".encode())
        digest.update(memoryview(arr.reshape(-1)).cast("B"))
        return arr

    tables = {key: take(key) for key in expected}
    emb = tables.get("llm_embedding.weight")
    speech = tables["speech_embedding.weight"]
    sos, task = (emb[0], emb[1]) if emb is not None else (speech[_CV3_SOS], speech[_CV3_TASK])
    vocab = _vocab(lay)
    return LlmWeights(
        kind=lay.kind, config=cfg, text_embedding=tables[QWEN + "embed_tokens.weight"],
        speech_embedding=speech, sos=sos.copy(), task_id=task.copy(),
        decoder_weight=tables["llm_decoder.weight"], decoder_bias=tables.get("llm_decoder.bias"),
        layers=[{name: tables[f"{QWEN}layers.{i}.{name}"] for name in LAYER_KEYS}
                for i in range(cfg["num_hidden_layers"])],
        norm=tables[QWEN + "norm.weight"], vocab=vocab, source_hash=digest.hexdigest(),
        source_path=label)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, streamed so a 2 GB checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- internals -------------------------------------------------------------------------------

def _layout(kind: str) -> _Layout:
    try:
        return _LAYOUTS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(_LAYOUTS)}") from None


def _resolve(path: Path) -> tuple[Path, Path]:
    """(checkpoint file, model directory searched for config.json)."""
    if path.is_dir():
        ckpt = path / "llm.pt"
        if ckpt.exists() and not ckpt.is_file():  # a FIFO would block the reader forever
            raise CheckpointError(f"{ckpt} is not a regular file; pass a CosyVoice2/3 llm.pt or its directory")
        if not ckpt.is_file():
            raise CheckpointError(f"{path} is a directory without llm.pt; pass a CosyVoice2/3 "
                                  "model directory (holding llm.pt) or the llm.pt file itself")
        return ckpt, path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; pass a CosyVoice2/3 llm.pt or its directory")
    return path, path.parent


def _read_state_dict(ckpt: Path) -> dict[str, Any]:
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # A real pickle naming a class or function is refused by weights_only, worded "Unsupported
        # global: GLOBAL x" or (torch 2.13, for blocked modules) "Trying to load unsupported
        # GLOBAL x whose module y is blocked"; garbage bytes fail with other opcodes ("Unsupported
        # operand"), and are simply not a checkpoint.
        m = re.search(r"\bGLOBAL (\S+)", str(e))
        if m:
            raise CheckpointError(
                f"{ckpt}: torch refused to load it with weights_only=True: it holds a Python "
                f"object ({m.group(1)}), not only tensors, and cosyfast never unpickles code; "
                "save the state dict alone") from None
        raise CheckpointError(f"{ckpt} is not a torch checkpoint (unpickling failed)") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for foreign bytes
        raise CheckpointError(f"{ckpt} is not a torch checkpoint "
                              f"({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{ckpt} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _detect_layout(state: Mapping[str, Any], ckpt: Path) -> _Layout:
    """CV2 iff llm_embedding exists; otherwise speech_embedding's row count decides."""
    if "llm_embedding.weight" in state:
        return _LAYOUTS["cosyvoice2"]
    speech = state.get("speech_embedding.weight")
    rows = speech.shape[0] if isinstance(speech, torch.Tensor) and speech.dim() == 2 else None
    if rows == _LAYOUTS["cosyvoice3"].speech_rows:
        return _LAYOUTS["cosyvoice3"]
    if rows == _LAYOUTS["cosyvoice2"].speech_rows:
        raise CheckpointError(f"{ckpt}: missing key 'llm_embedding.weight' (speech_embedding has "
                              "6564 rows, the CosyVoice2 layout, which keeps sos/task_id there)")
    hint = ""
    if "text_embedding.weight" in state or any(k.startswith("text_encoder.") for k in state):
        hint = "; it looks like a CosyVoice 1 (TransformerLM) checkpoint, which is not supported"
    elif speech is None and QWEN + "embed_tokens.weight" in state:
        hint = "; missing key 'speech_embedding.weight', which tells CosyVoice2 from CosyVoice3"
    found = "no speech_embedding.weight" if speech is None else \
        f"speech_embedding.weight of shape {_shape(speech)}"
    raise CheckpointError(
        f"{ckpt}: unknown checkpoint layout ({found}); expected CosyVoice2 (llm_embedding.weight "
        f"[2,H], speech_embedding [6564,H]) or CosyVoice3 (no llm_embedding, speech_embedding "
        f"[6761,H]){hint}")


def _resolve_config(state: Mapping[str, Any], config: Any, model_dir: Path,
                    ckpt: Path) -> tuple[dict[str, Any], str]:
    """(normalized config, where it came from)."""
    if isinstance(config, Mapping):
        return _normalize_config(config, "the given config", state), "the given config"
    if config is not None:
        src = Path(config)
        if src.is_dir():
            src = src / "config.json"
    else:
        src = model_dir / CONFIG_RELPATH
        if not src.is_file():
            return _infer_config(state, ckpt), "inferred from the weights"
    try:
        if not src.is_file():  # a FIFO would block the reader forever
            raise OSError(f"{src} is not a regular file")
        raw = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {src} as a JSON config: {_first_line(e)}") from None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{src} is not a JSON object")
    return _normalize_config(raw, str(src), state), str(src)


def _normalize_config(raw: Mapping[str, Any], src: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face Qwen2 config -> the fields cosyfast uses; checked against itself and weights."""
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{src}: {msg}")

    if raw.get("model_type", "qwen2") != "qwen2":
        raise bad(f"model_type is {raw['model_type']!r}, expected 'qwen2'")
    ints: dict[str, int] = {}
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        if key not in raw:
            raise bad(f"missing {key!r}")
        ints[key] = raw[key]
    ints["num_key_value_heads"] = raw.get("num_key_value_heads") or ints["num_attention_heads"]
    for key, v in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise bad(f"{key} must be a positive integer, got {v!r}")
    h, heads, kv = ints["hidden_size"], ints["num_attention_heads"], ints["num_key_value_heads"]
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if h % heads:
            raise bad(f"num_attention_heads {heads} does not divide hidden_size {h}")
        head_dim = h // heads
    elif not isinstance(head_dim, int) or head_dim <= 0:
        raise bad(f"head_dim must be a positive integer, got {head_dim!r}")
    if heads % kv:
        raise bad(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    # transformers < 5 writes rope_theta (+ rope_scaling); 5.x nests both in rope_parameters.
    theta = raw.get("rope_theta")
    for rope_key in ("rope_scaling", "rope_parameters"):
        rope = raw.get(rope_key) or {}
        if not isinstance(rope, Mapping):
            raise bad(f"{rope_key} must be an object or null, got {rope!r}")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise bad(f"{rope_key} {dict(rope)!r} is not supported (plain RoPE only)")
        theta = theta if theta is not None else rope.get("rope_theta")
    theta = 10000.0 if theta is None else theta  # Hugging Face Qwen2's default
    eps = raw.get("rms_norm_eps", 1e-6)
    # Both are used as float32 (the C++ CpuQwen2Config::Validate agrees): an epsilon of 1 or
    # more swamps what it normalises; a theta past float32 becomes inf and every rotation 0.
    for key, v, high in (("rope_theta", theta, _F32_MAX), ("rms_norm_eps", eps, 1.0)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < high:
            raise bad(f"{key} must be a number in (0, {high:g}), got {v!r}")

    # Consistency with the weights, so a mismatched config is blamed on the config.
    emb = state.get(QWEN + "embed_tokens.weight")
    if isinstance(emb, torch.Tensor) and emb.dim() == 2 and emb.shape[1] != h:
        raise bad(f"hidden_size {h} does not match the checkpoint's hidden size {emb.shape[1]} "
                  f"(embed_tokens {_shape(emb)})")
    vocab = raw.get("vocab_size")
    if isinstance(emb, torch.Tensor) and vocab is not None and emb.shape[0] != vocab:
        raise bad(f"vocab_size {vocab} does not match embed_tokens {_shape(emb)}")
    # Checked before anything is built per layer: a config claiming a billion layers over a
    # two-layer file must fail here, not in a billion-entry shape table.
    n_ckpt = _count_layers(state)
    if n_ckpt != ints["num_hidden_layers"]:
        raise bad(f"num_hidden_layers is {ints['num_hidden_layers']} but the checkpoint has "
                  f"{n_ckpt} layers")
    return {**ints, "rms_norm_eps": float(eps), "rope_theta": float(theta), "head_dim": head_dim}


def _infer_config(state: Mapping[str, Any], ckpt: Path) -> dict[str, Any]:
    """No config.json: read sizes off the weights and assume Qwen2-0.5B's head_dim of 64."""
    def need(key: str) -> torch.Tensor:
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise CheckpointError(f"{ckpt}: missing key {key!r} (needed to infer the model size, "
                                  f"since no {CONFIG_RELPATH} was found)")
        return t

    h = need(QWEN + "embed_tokens.weight").shape[1]
    n_layers = _count_layers(state)
    if n_layers == 0:
        raise CheckpointError(f"{ckpt}: missing key '{QWEN}layers.0.{LAYER_KEYS[0]}' "
                              "(no transformer layers found)")
    ffn = need(f"{QWEN}layers.0.mlp.gate_proj.weight").shape[0]
    kv_rows = need(f"{QWEN}layers.0.self_attn.k_proj.weight").shape[0]
    if h % GUESSED_HEAD_DIM or kv_rows % GUESSED_HEAD_DIM:
        raise CheckpointError(
            f"{ckpt}: no {CONFIG_RELPATH} found and the head count cannot be inferred (hidden "
            f"{h}, k_proj rows {kv_rows} are not multiples of {GUESSED_HEAD_DIM}); pass config=")
    heads, kv = h // GUESSED_HEAD_DIM, kv_rows // GUESSED_HEAD_DIM
    warnings.warn(f"{ckpt}: no {CONFIG_RELPATH} found; inferred {n_layers} layers, hidden {h}, "
                  f"{heads} heads and {kv} KV heads assuming head_dim {GUESSED_HEAD_DIM}, "
                  "rope_theta 1e6, rms_norm_eps 1e-6 (CosyVoice-BlankEN's values)",
                  CheckpointWarning, stacklevel=3)
    return {"num_hidden_layers": n_layers, "hidden_size": h, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": ffn, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "head_dim": GUESSED_HEAD_DIM}


def _validate(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], lay: _Layout,
              cfg: Mapping[str, Any], cfg_src: str, ckpt: Path) -> None:
    """Check keys in canonical order and report the first problem; then the unexpected keys."""
    for key, shape in expected.items():
        t = state.get(key)
        if t is None:
            raise CheckpointError(f"{ckpt}: missing key {key!r} ({lay.kind} layout)")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{ckpt}: {key!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{ckpt}: {key!r} has shape {_shape(t)}, expected {list(shape)} "
                                  f"({lay.kind} layout; sizes: {cfg_src})")
        if not t.is_floating_point():
            raise CheckpointError(f"{ckpt}: {key!r} has dtype {t.dtype}, expected a float tensor")
        # A view repeating one element (stride 0) is a few bytes in the file and gigabytes once
        # converted: refuse storage smaller than the shape needs.
        held, needed = t.untyped_storage().nbytes(), t.numel() * t.element_size()
        if held < needed:
            raise CheckpointError(f"{ckpt}: {key!r} of shape {_shape(t)} needs {needed} bytes but its "
                                  f"storage holds {held} (strides {list(t.stride())}): not a weight table")
    extra = [k for k in state if k not in expected and not _IGNORED_RE.match(k)]
    if "llm_decoder.bias" in extra:
        raise CheckpointError(
            f"{ckpt}: unexpected key 'llm_decoder.bias' in a {lay.kind} checkpoint: its decoder "
            "has no bias upstream (CosyVoice3LM builds it with bias=False and loads strict=True)")
    layer_extra = [k for k in extra if _LAYER_RE.match(k)]
    if layer_extra:
        raise CheckpointError(f"{ckpt}: unexpected key {layer_extra[0]!r}: the config ({cfg_src}) "
                              f"has {cfg['num_hidden_layers']} layers")
    if extra:
        warnings.warn(f"{ckpt}: ignoring {len(extra)} unexpected key(s): {', '.join(extra[:5])}"
                      + (" ..." if len(extra) > 5 else ""), CheckpointWarning, stacklevel=3)


def _to_f32(t: torch.Tensor, key: str, ckpt: Path, block: int = 1 << 24) -> np.ndarray:
    """float32, C-contiguous numpy; shares memory with `t` when it already is float32.

    Non-finite or huge (> MAX_WEIGHT) weights are rejected here because downstream they would
    only surface as silent garbage; min and max need no temporary, even for the 545 MB table.
    """
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    arr = np.ascontiguousarray(t.numpy())
    flat = arr.reshape(-1)
    for start in range(0, flat.size, block):
        part = flat[start:start + block]
        low, high = part.min(), part.max()
        if not -MAX_WEIGHT <= low <= high <= MAX_WEIGHT:  # NaN fails every comparison
            if not (np.isfinite(low) and np.isfinite(high)):
                raise CheckpointError(f"{ckpt}: {key!r} holds NaN or infinite values")
            raise CheckpointError(f"{ckpt}: {key!r} holds {max(-low, high):g}; weights must have "
                                  f"magnitude at most {MAX_WEIGHT:g} (float32 math overflows)")
    return arr


def _text_vocab(state: Mapping[str, Any], lay: _Layout, ckpt: Path) -> int:
    """Rows of the text embedding: any count (fine-tuned models add tokens) that holds the ids
    the layout itself uses; request ids are checked against it when a prompt is assembled."""
    emb = state.get(QWEN + "embed_tokens.weight")
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        return TEXT_VOCAB  # _validate then names the missing key or the wrong shape
    rows = emb.shape[0]
    if rows <= max(lay.required_text_id, 0):
        need = f"id {lay.required_text_id} (<|endofprompt|>)" if lay.required_text_id >= 0 else "a row"
        raise CheckpointError(f"{ckpt}: '{QWEN}embed_tokens.weight' has {rows} rows, but {lay.kind} "
                              f"needs {need}")
    return rows


def _require_fits_file(state: Mapping[str, Any], expected: Mapping[str, Any], ckpt: Path) -> None:
    """The tensors' bytes cannot exceed the file's (torch saves storages uncompressed)."""
    needed = sum(state[k].numel() * state[k].element_size() for k in expected)
    size = ckpt.stat().st_size
    if needed > size:
        raise CheckpointError(f"{ckpt}: its tensors' shapes need {needed} bytes but the file has "
                              f"only {size}: not a checkpoint of real weights")


def _count_layers(state: Mapping[str, Any]) -> int:
    indices = [int(m.group(1)) for k in state if (m := _LAYER_RE.match(k))]
    return max(indices) + 1 if indices else 0


def _shape(t: Any) -> list[int]:
    return list(t.shape) if hasattr(t, "shape") else []


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
