"""Writes the TurboMind model directory for a CosyVoice LLM checkpoint, once, cached by content.

The exported model is a plain Qwen2 whose vocabulary is the speech vocabulary: embed_tokens =
speech_embedding and lm_head = llm_decoder.weight, both padded with zero rows to a multiple of
64 (CV2 6592, CV3 6784). The decoder bias is not exported (TurboMind ignores lm_head biases): the
C++ sampler adds it. The text embedding and sos/task_id rows stay on the host for prompt assembly.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ._paths import cache_root
from .checkpoint import LlmWeights

EXPORT_FORMAT = 1  # bump when the exported layout changes, so stale caches are not reused


def _padded(rows: np.ndarray, total: int) -> torch.Tensor:
    out = torch.zeros((total, rows.shape[1]), dtype=torch.bfloat16)
    out[: rows.shape[0]] = torch.from_numpy(rows).to(torch.bfloat16)
    return out


def _qwen2_config(weights: LlmWeights, vocab: int, session_len: int) -> dict:
    c = weights.config
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": c["hidden_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "intermediate_size": c["intermediate_size"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "max_position_embeddings": max(32768, session_len),
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
    }


def _tokenizer_files(vocab: int) -> dict[str, dict]:
    """A word-level tokenizer over names t0..t{vocab-1}: TurboMind's loader wants one; cosyfast
    never tokenizes through it."""
    tokenizer: dict[str, object] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)}, "unk_token": "t0"},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "t0", "bos_token": "t0", "eos_token": "t1",
              "model_max_length": 1 << 20}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


def export_dir_for(weights: LlmWeights, cache_dir: Path | None = None) -> Path:
    key = f"{weights.source_hash[:24]}-v{EXPORT_FORMAT}"
    return (cache_dir or cache_root()) / "turbomind" / key


def export_turbomind(weights: LlmWeights, cache_dir: Path | None = None, session_len: int | None = None,
                     progress: bool = True) -> Path:
    """Returns the TurboMind model directory for `weights`, writing it first if it is not cached.

    Written into a temporary directory beside the target and renamed into place, so a crash
    leaves nothing half-written under the final name. `session_len`: default the core's
    max_session_len.
    """
    if session_len is None:
        from . import _core

        session_len = _core.DEFAULTS["max_session_len"]
    target = export_dir_for(weights, cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    vocab = weights.padded_vocab()
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        tensors: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": _padded(weights.speech_embedding, vocab),
            "lm_head.weight": _padded(weights.decoder_weight, vocab),
            "model.norm.weight": torch.from_numpy(weights.norm).to(torch.bfloat16),
        }
        layers = tqdm(weights.layers, desc="export turbomind", unit="layer", disable=not progress)
        for i, layer in enumerate(layers):
            for name, value in layer.items():
                tensors[f"model.layers.{i}.{name}"] = torch.from_numpy(value).to(torch.bfloat16)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {"config.json": _qwen2_config(weights, vocab, session_len), **_tokenizer_files(vocab),
                 "cosyfast_export.json": {"source": str(weights.source_path), "source_hash": weights.source_hash,
                                          "kind": weights.kind, "format": EXPORT_FORMAT}}
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent writer that won: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
