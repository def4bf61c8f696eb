"""Random-weight model directories shaped exactly like CosyVoice2/3 ones.

Why: tests, CI and `cosyfast demo` need a model with the real key names, shapes and directory
layout, without downloading 2 GB. The keys come from `checkpoint.expected_shapes`, so a synthetic
model always passes the same validation a real one does.

Weight scales (the choice that makes a random model usable for decoding tests):

* Embeddings (text, speech, llm_embedding) have std `EMBED_STD` = 0.5, so that every input row is
  clearly distinct and greedy choices are not decided by rounding.
* Layer matrices have std 0.02 at the full size (Qwen2's init), scaled by sqrt(896 / hidden) for
  other sizes (0.075 for tiny). Why: with 0.02 in a 64-wide model, q.k scores are ~0.03, attention
  is uniform and the two layers add ~7% to the residual stream, so broken attention, RoPE or KV
  caching would barely move the logits (measured: shuffling the prompt changed them by 0.1%).
  Scaled, the tiny model's layers matter as the full model's do (shuffling: ~12%, full: ~95%).
  Norms are 1 + N(0, 0.02); q/k/v biases N(0, 0.02).
* The speech decoder has std `decoder_scale / sqrt(hidden)`. The final RMSNorm makes the hidden
  state's RMS about 1, so each logit is a sum of `hidden` terms and its std is about
  `decoder_scale`, whatever the model size. The default 3 gives a top-2 gap of about 0.7 among
  6.5k logits, far above bf16 noise, while top-p 0.8 still keeps several candidates.
* CosyVoice2's decoder bias has std `DECODER_BIAS_STD` = 0.5, large enough that an engine that
  forgets to add it picks different tokens.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from tqdm import tqdm

from ._paths import atomic_write, atomic_write_text, cache_root
from .checkpoint import CONFIG_RELPATH, LM_HEAD, QWEN, SPEECH_TOKEN_SIZE, TEXT_VOCAB, expected_shapes

__all__ = ["SIZES", "KINDS", "write_model_dir", "ensure_default_model", "write_tokenizer"]

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128),
    "full": dict(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864),
}
KINDS = ("cosyvoice2", "cosyvoice3")
EMBED_STD = 0.5
MATRIX_STD = 0.02        # at FULL_HIDDEN; scaled by sqrt(FULL_HIDDEN / hidden)
FULL_HIDDEN = 896
NORM_NOISE_STD = 0.02
BIAS_STD = 0.02
DECODER_BIAS_STD = 0.5
DEFAULT_DECODER_SCALE = 3.0
_PROGRESS_PARAMS = 50_000_000  # show progress bars above this many parameters


def write_model_dir(out_dir: str | os.PathLike[str], kind: str = "cosyvoice2",
                    size: str | Mapping[str, int] = "tiny", seed: int = 0,
                    decoder_scale: float = DEFAULT_DECODER_SCALE,
                    dtype: torch.dtype = torch.float32, progress: bool | None = None) -> Path:
    """Write `llm.pt`, `CosyVoice-BlankEN/config.json` and `<kind>.yaml` into `out_dir`, and the
    demo tokenizer into `CosyVoice-BlankEN/` where the `tokenizers` package is installed.

    Deterministic: the same (kind, size, seed, decoder_scale, dtype) gives identical tensors.
    Each file is written to a temporary name and renamed, so none is ever half-written.
    `progress` defaults to on for models above 50M parameters (the full size).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    dims = _dims(size)
    if not (isinstance(decoder_scale, (int, float)) and decoder_scale > 0):
        raise ValueError(f"decoder_scale must be a positive number, got {decoder_scale!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _qwen2_config(dims)
    shapes = expected_shapes(kind, cfg)
    n_params = sum(math.prod(s) for s in shapes.values())
    show = n_params > _PROGRESS_PARAMS if progress is None else progress

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    with tqdm(total=n_params, unit="param", unit_scale=True, disable=not show,
              desc=f"generating {kind}") as bar:
        for key, shape in shapes.items():
            state[key] = _init(key, shape, dims["hidden"], decoder_scale, gen).to(dtype)
            bar.update(math.prod(shape))
    # lm_head is tied to embed_tokens in CosyVoice-BlankEN; torch.save stores shared storage once.
    state = _insert_after(state, QWEN + "norm.weight", LM_HEAD, state[QWEN + "embed_tokens.weight"])

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f, _progress_file(f, show, "writing llm.pt") as pf:
            torch.save(state, pf)

    atomic_write(out / "llm.pt", save)
    atomic_write_text(out / CONFIG_RELPATH, json.dumps(cfg, indent=2) + "\n")
    atomic_write_text(out / f"{kind}.yaml", _yaml_text(kind, dims, seed))
    if _has_tokenizers():
        write_tokenizer(out / Path(CONFIG_RELPATH).parent)
    return out


def ensure_default_model(cache_dir: str | os.PathLike[str] | None = None,
                         kind: str = "cosyvoice2", size: str = "tiny") -> Path:
    """Return `<cache>/synthetic/<kind>-<size>-seed0`, building it (seed 0) the first time.

    `cache_dir` is the cache root (default `$COSYFAST_CACHE`, else `~/.cache/cosyfast`). The model
    is built in a temporary sibling directory and renamed into place, so a crash or a concurrent
    builder never leaves a partial model where a reader would find it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "synthetic" / f"{kind}-{size}-seed0"
    if _is_model_dir(target, kind):
        tok_dir = target / Path(CONFIG_RELPATH).parent
        if _has_tokenizers() and not (tok_dir / "vocab.json").is_file():
            write_tokenizer(tok_dir)  # a model built before `tokenizers` was installed
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write_model_dir(tmp, kind=kind, size=size, seed=0)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache should read like any directory
        try:
            os.rename(tmp, target)  # atomic; fails if another builder won the race
        except OSError:
            if not _is_model_dir(target, kind):
                raise RuntimeError(f"{target} exists but is not a complete synthetic model; "
                                   "delete it and retry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# The demo tokenizer: a small byte-level BPE trained on a fixed corpus, laid out as Qwen2's
# (vocab.json + merges.txt + tokenizer_config.json) so that the same loader reads it. Its BPE
# vocabulary is padded to Qwen2's 151643 entries with tokens no text produces, so that the added
# tokens land on Qwen2's ids (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, and
# upstream's <|endofprompt|> 151646, which CosyVoice3 requires).
QWEN2_BPE_SIZE = 151643
DEMO_BPE_MERGES = 2000
_DEMO_WORDS = (
    "the a an of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well also play small end "
    "put home read hand port large spell add even land here must big high such follow act why ask men change went "
    "light kind off need house picture try us again animal point mother world near build self earth father voice "
    "speech token model stream hello thank please today tomorrow morning music story happy quiet river mountain")


def write_tokenizer(out_dir: str | os.PathLike[str]) -> Path:
    """Write the demo tokenizer (deterministic) into `out_dir`; needs the `tokenizers` package."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .text import QWEN2_SPLIT

    rng = random.Random(0)
    words = _DEMO_WORDS.split()
    corpus = []
    for _ in range(3000):
        n = rng.randint(3, 14)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        corpus.append(sentence.capitalize() + rng.choice([".", "!", "?", ",", ";"]) + f" {rng.randint(0, 999)}")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(_regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + DEMO_BPE_MERGES, initial_alphabet=alphabet,
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(corpus, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        vocab: dict[str, int] = json.loads(Path(tmp, "vocab.json").read_text(encoding="utf-8"))
        merges = Path(tmp, "merges.txt").read_text(encoding="utf-8")
    for i in range(len(vocab), QWEN2_BPE_SIZE):
        vocab[f"<|cosyfast_demo_unused_{i}|>"] = i
    added = {str(QWEN2_BPE_SIZE + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True}
             for i, t in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>"))}
    config = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "bos_token": None,
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "model_max_length": 32768, "clean_up_tokenization_spaces": False, "errors": "replace",
              "split_special_tokens": False}
    atomic_write_text(out / "merges.txt", merges)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))  # last: it marks the tokenizer done
    return out


def _regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


def _has_tokenizers() -> bool:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


# --- internals -------------------------------------------------------------------------------

def _dims(size: str | Mapping[str, int]) -> dict[str, int]:
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)} or a dict")
        return dict(SIZES[size])
    dims = dict(size)
    keys = set(SIZES["tiny"])
    if set(dims) != keys or not all(isinstance(v, int) and v > 0 for v in dims.values()):
        raise ValueError(f"size dict needs exactly the positive integers {sorted(keys)}, "
                         f"got {dims}")
    if dims["hidden"] % dims["heads"] or dims["heads"] % dims["kv_heads"]:
        raise ValueError(f"heads must divide hidden and kv_heads must divide heads, got {dims}")
    return dims


def _qwen2_config(d: Mapping[str, int]) -> dict[str, Any]:
    """The CosyVoice-BlankEN config.json fields (Qwen2-0.5B's values except the sizes)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "intermediate_size": d["ffn"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "vocab_size": TEXT_VOCAB,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "torch_dtype": "float32",
    }


def _init(key: str, shape: tuple[int, ...], hidden: int, decoder_scale: float,
          gen: torch.Generator) -> torch.Tensor:
    """One tensor drawn from `gen`; the caller's fixed key order makes the result deterministic."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if key.endswith("norm.weight"):
        return noise.mul_(NORM_NOISE_STD).add_(1.0)
    if key == "llm_decoder.weight":
        return noise.mul_(decoder_scale / math.sqrt(hidden))
    if key == "llm_decoder.bias":
        return noise.mul_(DECODER_BIAS_STD)
    if key.endswith("embedding.weight") or key.endswith("embed_tokens.weight"):
        return noise.mul_(EMBED_STD)
    if key.endswith(".bias"):
        return noise.mul_(BIAS_STD)
    return noise.mul_(MATRIX_STD * math.sqrt(FULL_HIDDEN / hidden))


def _insert_after(state: dict[str, torch.Tensor], after: str, key: str,
                  value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rebuild the dict with `key` right after `after`: upstream's state dict order."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


@contextmanager
def _progress_file(f: BinaryIO, show: bool, desc: str) -> Iterator[Any]:
    """`f`, or a thin wrapper that advances a byte-count progress bar on every write."""
    if not show:
        yield f
        return

    class _Counting:
        def __init__(self, bar: tqdm) -> None:
            self.bar = bar

        def write(self, data: Any) -> int:
            n = f.write(data)
            self.bar.update(n)
            return n

        def flush(self) -> None:
            f.flush()

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        yield _Counting(bar)


def _is_model_dir(path: Path, kind: str) -> bool:
    return (path / "llm.pt").is_file() and (path / CONFIG_RELPATH).is_file() \
        and (path / f"{kind}.yaml").is_file()


def _yaml_text(kind: str, d: Mapping[str, int], seed: int) -> str:
    """Informative only (cosyfast reads config.json and llm.pt): the upstream defaults, in YAML."""
    extra = ("# CosyVoice3: sos/eos/task_id/fill are speech rows 6561/6562/6563/6564; stop ids\n"
             "# 6561..6760; the text must contain <|endofprompt|> (151646).\n"
             if kind == "cosyvoice3" else
             "# CosyVoice2: llm_embedding rows 0/1 are sos/task_id; eos 6561; stop ids\n"
             "# 6561..6563.\n")
    return (f"# Synthetic {kind} model written by cosyfast.synthetic (random weights, "
            f"seed {seed}):\n"
            "# the shapes of the real one, no voice. Not a hyperpyyaml file.\n" + extra +
            f"llm_input_size: {d['hidden']}\n"
            f"llm_output_size: {d['hidden']}\n"
            f"speech_token_size: {SPEECH_TOKEN_SIZE}\n"
            "token_frame_rate: 25\n"
            "min_token_text_ratio: 2\n"
            "max_token_text_ratio: 20\n"
            "sampling:  # ras_sampling\n"
            "  top_p: 0.8\n"
            "  top_k: 25\n"
            "  win_size: 10\n"
            "  tau_r: 0.1\n"
            "mix_ratio: [5, 15]\n")
