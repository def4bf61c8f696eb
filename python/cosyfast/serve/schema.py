"""The HTTP API's request and response bodies as pydantic models: what /openapi.json shows and
what every body is parsed with (strict types, unknown fields refused, JSON nesting bounded by
pydantic's parser). Option ranges are not checked here: the Python API and the C++ core's
Validate() check them, so the service and the library say the same sentence."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..model import request_options

# Field descriptions for the schema; the options' types and defaults come from request_options.
_OPTION_DOCS = {
    "seed": "random seed; absent: a fresh one per request",
    "top_p": "nucleus: keep tokens while the mass before them is < top_p",
    "top_k": "keep at most top_k tokens",
    "ras": "repetition-aware re-draw (CosyVoice's ras_sampling)",
    "win_size": "RAS window over the tokens decoded so far",
    "tau_r": "re-draw when a token's count in the window >= win_size * tau_r",
    "exclude_repeated": "the re-draw excludes the repeated token (current upstream rule)",
    "min_token_text_ratio": "min_len = int(text length * this), unless min_len is given",
    "max_token_text_ratio": "max_len = int(text length * this), unless max_len is given",
    "max_len": "most speech tokens (overrides the ratio)",
    "min_len": "fewest speech tokens before a stop token counts (overrides the ratio)",
}


def _option_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(request_options)
    sig = typing.cast(Any, request_options).__kwdefaults__
    return {name: (hints[name], Field(default, description=_OPTION_DOCS.get(name)))
            for name, default in sig.items()}


_STRICT = ConfigDict(extra="forbid", strict=True)
RequestOptionsBody: type[BaseModel] = create_model("RequestOptions", __config__=_STRICT, **_option_fields())
OPTION_FIELDS: tuple[str, ...] = tuple(RequestOptionsBody.model_fields)


class SpeechTokensRequest(RequestOptionsBody):  # type: ignore[misc,valid-type]
    """POST /v1/speech_tokens. The model sees prompt text + text (CosyVoice's order). Give the text
    as ids (text_ids) or as a string (text) where the model has a tokenizer; likewise prompt_text."""

    model_config = _STRICT
    text_ids: list[int] | None = Field(None, description="the text to speak, as token ids")
    text: str | None = Field(None, description="the text to speak, tokenized by the model's tokenizer")
    prompt_text_ids: list[int] | None = Field(None, description="the voice prompt's transcript, as token ids")
    prompt_text: str | None = Field(None, description="the voice prompt's transcript, as a string")
    prompt_speech_tokens: list[int] = Field(default_factory=list, description="the voice prompt's speech tokens")
    stream: bool = Field(True, description="false: answer with one JSON object once the request has ended")


class BistreamStart(RequestOptionsBody):  # type: ignore[misc,valid-type]
    """The first message on WS /v1/speech_tokens/bistream: the voice prompt and the options."""

    model_config = _STRICT
    prompt_text_ids: list[int] | None = None
    prompt_text: str | None = None
    prompt_speech_tokens: list[int] = Field(default_factory=list)
    mix_ratio: tuple[int, int] = Field((5, 15), description="(text_group, speech_group) of the interleave")


class BistreamText(BaseModel):
    """Every later bistream message: a piece of text (ids or a string), and/or the end of the text."""

    model_config = _STRICT
    text_ids: list[int] | None = None
    text: str | None = None
    end: bool = False


class TokensChunk(BaseModel):
    tokens: list[int]


class Summary(BaseModel):
    finish_reason: str = Field(description="stop_token, max_len, cancelled or error")
    num_tokens: int


class Complete(Summary):
    """The answer to `"stream": false`."""

    tokens: list[int]


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the body field at fault, or null")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
