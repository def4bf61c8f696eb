"""Text -> text token ids, as CosyVoice2/3 tokenize text: the model directory's own Qwen2
tokenizer (`CosyVoice-BlankEN/vocab.json` + `merges.txt`, or a `tokenizer.json`) with the special
tokens upstream's `get_qwen_tokenizer` adds for each version, so that `<|endofprompt|>`, `[breath]`
and the rest get the ids the model was trained with. Text normalization (numbers, punctuation,
splitting long text) stays the caller's, as in upstream's frontend.

    tok = cosyfast.text.load_tokenizer("CosyVoice2-0.5B/", kind="cosyvoice2")
    tokens = model.generate(tok.encode("Hello there."), prompt_text_ids=tok.encode("The prompt's words."), ...)

Needs the `tokenizers` package (the `text` extra; `serve` includes it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

TOKENIZER_DIR = "CosyVoice-BlankEN"  # where upstream's model directories keep it
# Qwen2's pre-tokenizer split (its tokenizer's PRETOKENIZE_REGEX).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"
# The special tokens upstream's CosyVoice2 tokenizer adds, in its order (new ones get the next ids:
# <|endofprompt|> is 151646 on Qwen2's vocabulary).
COSYVOICE2_SPECIALS: tuple[str, ...] = (
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]", "<strong>", "</strong>", "[noise]", "[laughter]",
    "[cough]", "[clucking]", "[accent]", "[quick_breath]", "<laughter>", "</laughter>", "[hissing]", "[sigh]",
    "[vocalized-noise]", "[lipsmack]", "[mn]")
# CosyVoice3 adds <|endofsystem|>, then ARPAbet phones (vowels plain and with stress 0-2) and pinyin.
_ARPABET_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
_ARPABET = "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
_PINYIN = (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié iòng ióng iù iú "
    "iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s sh t u uang ue un uo uà uài uàn "
    "uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn "
    "àng ào á ái án áng áo è èi èn èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo "
    "ē ēi ēn ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ")
COSYVOICE3_SPECIALS: tuple[str, ...] = COSYVOICE2_SPECIALS + ("<|endofsystem|>",) + tuple(
    f"[{p}{s}]" for p in _ARPABET.split() for s in (("", "0", "1", "2") if p in _ARPABET_VOWELS else ("",))
) + tuple(f"[{p}]" for p in _PINYIN.split())
SPECIALS = {"cosyvoice2": COSYVOICE2_SPECIALS, "cosyvoice3": COSYVOICE3_SPECIALS}


class NoTokenizer(LookupError):
    """The model directory has no tokenizer (give token ids instead)."""


def find_tokenizer_dir(model_path: str | os.PathLike[str]) -> Path | None:
    """The directory holding the tokenizer of a model directory (or of its llm.pt), or None."""
    p = Path(model_path)
    base = p.parent if p.is_file() else p
    for d in (base / TOKENIZER_DIR, base):
        if (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
            return d
    return None


class Tokenizer:
    """A model's text tokenizer: encode(text) gives the ids CosyVoice's frontend would."""

    def __init__(self, backend: Any, source: Path, kind: str) -> None:
        self._backend, self.source, self.kind = backend, source, kind

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], kind: str = "cosyvoice2") -> "Tokenizer":
        """From a tokenizer directory (tokenizer.json, or vocab.json + merges.txt and
        tokenizer_config.json's added tokens); `kind` picks upstream's special tokens."""
        if kind not in SPECIALS:
            raise ValueError(f"kind must be one of {sorted(SPECIALS)}, got {kind!r}")
        import tokenizers
        from tokenizers import AddedToken

        d = Path(path)
        if (d / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        else:
            backend = _qwen2_from_vocab(d)
        # The added tokens the tokenizer declares (Qwen2's <|endoftext|>, <|im_start|>,
        # <|im_end|>), each checked to land on its declared id.
        declared = _declared_added_tokens(d)
        for token_id, content in declared:
            backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            got = backend.token_to_id(content)
            if got != token_id:
                raise ValueError(f"{d}: tokenizer_config.json declares {content!r} as id {token_id}, but the vocabulary "
                                 f"({backend.get_vocab_size(with_added_tokens=False)} entries) gives it {got}")
        # Upstream's additions, in its order: a new token takes the next id.
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT,) + SPECIALS[kind]])
        return cls(backend, d, kind)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` (no BOS/EOS: Qwen2 adds none). Special tokens in the text, such as
        <|endofprompt|>, become their single ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return list(self._backend.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._backend.decode(list(ids), skip_special_tokens=False))

    def token_to_id(self, token: str) -> int | None:
        found = self._backend.token_to_id(token)
        return None if found is None else int(found)

    @property
    def vocab_size(self) -> int:
        """Ids in use, added tokens included (the largest id + 1 may be more)."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))


def load_tokenizer(model_path: str | os.PathLike[str], kind: str = "cosyvoice2") -> Tokenizer:
    """The tokenizer of a CosyVoice2/3 model directory (or of the directory holding its llm.pt):
    `CosyVoice-BlankEN/` as upstream ships it. Raises NoTokenizer when there is none, ImportError
    without the `tokenizers` package."""
    d = find_tokenizer_dir(model_path)
    if d is None:
        raise NoTokenizer(f"{model_path} has no tokenizer (no {TOKENIZER_DIR}/vocab.json + merges.txt or "
                          "tokenizer.json): give text as token ids")
    return Tokenizer.from_dir(d, kind)


def _qwen2_from_vocab(d: Path) -> Any:
    """Qwen2's tokenizer pipeline over a byte-level BPE vocabulary: NFC, its regex split, byte-level."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (d / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    backend = Backend(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                          end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _declared_added_tokens(d: Path) -> list[tuple[int, str]]:
    path = d / "tokenizer_config.json"
    if not path.is_file():
        return []
    config = json.loads(path.read_text(encoding="utf-8"))
    added = config.get("added_tokens_decoder") or {}
    return sorted((int(i), str(t["content"])) for i, t in added.items())
