"""The one workload every benchmark path runs: identical prompts and token counts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checkpoint import LlmWeights

TOKENS_PER_AUDIO_SECOND = 25


@dataclass(frozen=True)
class Request:
    text_ids: list[int]
    prompt_text_ids: list[int]
    prompt_speech_tokens: list[int]
    seed: int


@dataclass(frozen=True)
class Workload:
    """`prompt_rows` = sos + prompt text + text + task_id + prompt speech; every request
    generates exactly `new_tokens` (min_len = max_len, so no path stops early)."""

    prompt_rows: int = 150
    new_tokens: int = 500
    seed: int = 0

    def requests(self, count: int, kind: str) -> list[Request]:
        rng = np.random.default_rng(self.seed)
        body = self.prompt_rows - 2
        speech = body * 2 // 3
        text_total = body - speech
        prompt_text = text_total // 3
        out = []
        for i in range(count):
            pt = rng.integers(0, 151643, size=prompt_text).tolist()
            if kind == "cosyvoice3":
                pt[-1] = 151646  # <|endofprompt|>
            out.append(Request(
                text_ids=rng.integers(0, 151643, size=text_total - prompt_text).tolist(),
                prompt_text_ids=pt,
                prompt_speech_tokens=rng.integers(0, 6561, size=speech).tolist(),
                seed=self.seed * 100003 + i,
            ))
        return out

    def length_options(self) -> dict[str, int]:
        return {"max_len": self.new_tokens, "min_len": self.new_tokens}


def prompt_rows(weights: LlmWeights, r: Request) -> np.ndarray:
    """The assembled prompt in numpy, for the paths that are not cosyfast (same rows as the core)."""
    text = np.asarray(r.prompt_text_ids + r.text_ids, dtype=np.int64)
    speech = np.asarray(r.prompt_speech_tokens, dtype=np.int64)
    return np.concatenate([weights.sos[None], weights.text_embedding[text], weights.task_id[None],
                           weights.speech_embedding[speech]], axis=0)
