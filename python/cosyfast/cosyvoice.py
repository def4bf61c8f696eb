"""A drop-in for CosyVoice's LLM module: `patch(model)` swaps a loaded CosyVoice2Model's or
CosyVoice3Model's `.llm` (upstream's Qwen2LM / CosyVoice3LM) for a `CosyVoiceLLM` that decodes
in cosyfast's C++ core, so CosyVoice's own `tts()` threads, flow and vocoder run unchanged:

    from cosyvoice.cli.cosyvoice import CosyVoice2
    import cosyfast.cosyvoice

    tts = CosyVoice2("pretrained_models/CosyVoice2-0.5B")
    cosyfast.cosyvoice.patch(tts.model)

The weights come from the module already loaded (its state_dict and its Qwen2 config): nothing
is read from disk again. docs/cosyvoice.md lists what differs from upstream.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _core
from .checkpoint import weights_from_state_dict
from .model import Model, _ids, request_options

__all__ = ["CosyVoiceLLM", "patch", "sampling_options_from"]

MIX_RATIO = (5, 15)  # upstream's mix_ratio: text ids, then speech tokens, per bistream group
_END = object()      # marks the end of a bistream's text iterator


def sampling_options_from(sampling: Callable[..., Any] | None) -> dict[str, Any]:
    """cosyfast sampling options equal to an upstream sampler, as CosyVoice's yaml builds it
    (`functools.partial(ras_sampling, top_p=..., top_k=..., win_size=..., tau_r=...)`).
    None gives {} (cosyfast's defaults, which are upstream's)."""
    if sampling is None:
        return {}
    func = sampling.func if isinstance(sampling, functools.partial) else sampling
    keywords = dict(sampling.keywords) if isinstance(sampling, functools.partial) else {}
    name = getattr(func, "__name__", type(func).__name__)
    if name == "ras_sampling":
        allowed = ("top_p", "top_k", "win_size", "tau_r")
        extra = {}
    elif name == "nucleus_sampling":
        allowed = ("top_p", "top_k")
        extra = {"ras": False}
    else:
        raise ValueError(f"cannot run the upstream sampler {name!r} in cosyfast (it runs ras_sampling and "
                         "nucleus_sampling); pass sampling_options=... to say what to use instead")
    unknown = set(keywords) - set(allowed)
    if unknown:
        raise ValueError(f"{name} has arguments cosyfast does not know: {sorted(unknown)}")
    return {**keywords, **extra}


def _row(values: Any, name: str, length: Any = None) -> list[int]:
    """Ids of one sequence from CosyVoice's [1, T] tensor (or [T], a list, an array); checks
    batch 1 and that a given length tensor agrees with the ids."""
    shape = tuple(getattr(values, "shape", ()))
    if len(shape) == 2 and shape[0] != 1:
        raise ValueError(f"{name} has shape {list(shape)}: cosyfast takes one request at a time, as "
                         "CosyVoice passes it ([1, T])")
    if len(shape) > 2:
        raise ValueError(f"{name} has shape {list(shape)}, expected [1, T]")
    ids = _ids(values, name)
    if length is not None:
        n = _ids(length, f"{name}_len")
        if len(n) != 1 or n[0] != len(ids):
            raise ValueError(f"{name}_len is {n} but {name} holds {len(ids)} ids")
    return ids


class CosyVoiceLLM:
    """CosyVoice's LLM interface (`inference`, `inference_bistream`, and the attributes servers
    read) over a cosyfast `Model`. Thread-safe: concurrent requests step together in the core.

    Sampling is upstream's RAS with the options given (default: those of the module's `sampling`
    partial). `seed`: None draws a fresh seed per request; an int makes every request reproducible.
    """

    def __init__(
        self,
        model: Model,
        *,
        sampling: Callable[..., Any] | None = None,
        sampling_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        self.model = model
        vocab = model.vocab
        self.speech_token_size: int = vocab["speech_token_size"]
        self.stop_token_ids: list[int] = list(vocab["stop_ids"])
        self.eos_token: int = vocab["eos"]
        self.fill_token: int = vocab["fill_token"]
        cv2 = model.kind == "cosyvoice2"
        # Upstream's row indices: CV2's in llm_embedding, CV3's in speech_embedding.
        self.sos: int = 0 if cv2 else self.speech_token_size
        self.task_id: int = 1 if cv2 else self.speech_token_size + 2
        self.mix_ratio: list[int] = list(MIX_RATIO)
        self.sampling = sampling  # upstream's sampler, kept for code that reads it; never called
        self.sampling_options: dict[str, Any] = dict(
            sampling_options if sampling_options is not None else sampling_options_from(sampling))
        self.seed = seed
        self.close_timeout = close_timeout
        # The core's one Validate(), called now so that bad options fail here, not per request.
        request_options(seed=0, **self.sampling_options).validate()

    @classmethod
    def from_module(
        cls,
        module: Any,
        engine: str = "auto",
        *,
        seed: int | None = None,
        sampling_options: Mapping[str, Any] | None = None,
        **load_options: Any,
    ) -> "CosyVoiceLLM":
        """Builds the fast LLM from a loaded Qwen2LM / CosyVoice3LM: its state_dict and the Qwen2
        config of `module.llm.model`. `load_options` go to `cosyfast.Model` (max_batch,
        max_session_len, table_dtype, engine options)."""
        if hasattr(module, "vllm"):
            raise ValueError("this llm already runs on vLLM (load_vllm deleted its layers): patch before load_vllm")
        try:
            config = module.llm.model.config.to_dict()
        except AttributeError:
            raise TypeError(f"expected CosyVoice's Qwen2LM or CosyVoice3LM (with llm.model.config, a transformers "
                            f"Qwen2 config), got {type(module).__name__}") from None
        weights = weights_from_state_dict(module.state_dict(), config, source=type(module).__name__)
        model = Model(weights, engine, **load_options)
        return cls(model, sampling=getattr(module, "sampling", None), sampling_options=sampling_options, seed=seed)

    # --- upstream's interface --------------------------------------------------------------

    def inference(
        self,
        text: Any,
        text_len: Any,
        prompt_text: Any,
        prompt_text_len: Any,
        prompt_speech_token: Any,
        prompt_speech_token_len: Any,
        embedding: Any = None,
        sampling: int = 25,
        max_token_text_ratio: float = 20,
        min_token_text_ratio: float = 2,
        uuid: str = "",
    ) -> Iterator[int]:
        """Speech token ids (ints), yielded as they are decoded, as upstream's Qwen2LM.inference.

        Tensors as CosyVoice passes them: [1, T] ids with [1] lengths. `embedding` is ignored
        (upstream's Qwen2LM ignores it too); so is `sampling` (upstream's RAS path takes top_k
        from its sampler, not from this argument); `uuid` only names the request upstream.
        Closing the generator ends the engine session before close() returns. An empty text
        yields nothing, as upstream (its max_len is 0).
        """
        text_ids = _row(text, "text", text_len)
        prompt_ids = _row(prompt_text, "prompt_text", prompt_text_len)
        speech = _row(prompt_speech_token, "prompt_speech_token", prompt_speech_token_len)
        options = self._options(min_token_text_ratio=min_token_text_ratio,
                                max_token_text_ratio=max_token_text_ratio)
        if int(len(text_ids) * max_token_text_ratio) < 1:
            return iter(())  # upstream's max_len is 0: it yields nothing
        return self._tokens(lambda: self.model.stream(text_ids, prompt_ids, speech, **options))

    def inference_bistream(
        self,
        text: Iterable[Any],
        prompt_text: Any,
        prompt_text_len: Any,
        prompt_speech_token: Any,
        prompt_speech_token_len: Any,
        embedding: Any = None,
        sampling: int = 25,
        max_token_text_ratio: float = 20,
        min_token_text_ratio: float = 2,
    ) -> Iterator[int]:
        """Speech token ids while the text arrives as an iterator of id pieces (CosyVoice's
        frontend yields [1, 1] tensors), as upstream's Qwen2LM.inference_bistream.

        The rules, as upstream runs them (csrc/decode/bistream.h has every detail):
          - the prompt speech goes in first, 15 tokens behind each 5 text ids;
          - then 5 text ids are fed, 15 speech tokens decoded, and the fill token 6563 (CV3:
            6564) either drawn or forced after 15 asks for the next 5 ids; it is not yielded;
          - the iterator is advanced only when the decoder needs text, one piece per fill, so
            ids beyond one group per piece wait for the tail;
          - when the iterator ends, the remaining text and task_id go in and decoding runs to a
            stop id (no min_len);
          - the eos-like stop ids are masked while text goes on; the fill token stays drawable.
        Limits upstream lacks: the tail stops after int(text ids * max_token_text_ratio) tokens
        in all, and at the engine's session length. Both engines run it (see `Model.bistream`).
        `embedding`, `sampling` and min_token_text_ratio are ignored, as upstream ignores them.
        """
        prompt_ids = _row(prompt_text, "prompt_text", prompt_text_len)
        speech = _row(prompt_speech_token, "prompt_speech_token", prompt_speech_token_len)
        options = self._options(max_token_text_ratio=max_token_text_ratio)
        mix = (int(self.mix_ratio[0]), int(self.mix_ratio[1]))
        pieces = iter(text)
        return self._bistream_tokens(
            lambda: self.model.bistream(prompt_ids, speech, mix_ratio=mix, **options), pieces)

    # --- what servers may call on an nn.Module ------------------------------------------------

    def to(self, *args: Any, **kwargs: Any) -> "CosyVoiceLLM":
        """No-op: the engine chose its device when the model was patched."""
        return self

    def eval(self) -> "CosyVoiceLLM":
        return self

    def half(self) -> "CosyVoiceLLM":
        """No-op: the engine keeps its own precision (float32 on the CPU, bfloat16 in TurboMind)."""
        return self

    def float(self) -> "CosyVoiceLLM":
        return self

    def load_state_dict(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cosyfast's LLM took its weights when it was patched in; to load others, load them "
                           "into a fresh CosyVoice model and patch that")

    @property
    def live_sessions(self) -> int:
        """Requests started and not yet finished."""
        return self.model.live_sessions

    def close(self) -> None:
        """Cancels every live request and frees the engine."""
        self.model.close()

    def __repr__(self) -> str:
        return f"CosyVoiceLLM(kind={self.model.kind!r}, engine={self.model.engine!r})"

    # --- internals --------------------------------------------------------------------------

    def _options(self, **length: Any) -> dict[str, Any]:
        return {**self.sampling_options, **length, "seed": self.seed}

    def _tokens(self, start: Callable[[], _core.Stream]) -> Iterator[int]:
        stream = start()
        try:
            yield from stream
        finally:
            self._end(stream)

    def _bistream_tokens(self, start: Callable[[], _core.Stream], pieces: Iterator[Any]) -> Iterator[int]:
        stream = start()
        try:
            while (event := stream.next_event()) is not None:
                if event != _core.Stream.NEED_TEXT:
                    yield event
                    continue
                piece = next(pieces, _END)
                if piece is _END:
                    stream.end_text()
                else:
                    stream.push_text(_ids(piece, "a text piece"))
        finally:
            self._end(stream)

    def _end(self, stream: _core.Stream) -> None:
        """Ends the session now (a no-op after a normal end) and waits for the engine to free it."""
        stream.cancel()
        stream.wait(self.close_timeout)


def patch(
    cosyvoice_model: Any,
    engine: str = "auto",
    *,
    seed: int | None = None,
    sampling_options: Mapping[str, Any] | None = None,
    **load_options: Any,
) -> CosyVoiceLLM:
    """Replaces a loaded CosyVoice2Model's / CosyVoice3Model's `.llm` with a `CosyVoiceLLM` built
    from it, and returns that. Also takes the CosyVoice2 / CosyVoice3 object (it patches its
    `.model`). Patching a patched model returns its LLM unchanged. The torch module is released,
    so its memory is freed unless something else holds it."""
    target = cosyvoice_model
    if not hasattr(target, "llm") and hasattr(getattr(target, "model", None), "llm"):
        target = target.model
    if not hasattr(target, "llm"):
        raise TypeError(f"expected a CosyVoice2Model / CosyVoice3Model (or CosyVoice2 / CosyVoice3) with an "
                        f"`llm`, got {type(cosyvoice_model).__name__}")
    if isinstance(target.llm, CosyVoiceLLM):
        return target.llm
    fast = CosyVoiceLLM.from_module(target.llm, engine, seed=seed, sampling_options=sampling_options,
                                    **load_options)
    target.llm = fast
    return fast
