"""benchmarks/greedy_divergence.py's verdict row: does the engine part from float32 no earlier than
HF in bfloat16, over every (layers, prompt) taken together."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from greedy_divergence import paired  # noqa: E402


def _rows(stream: str, parts: dict[tuple[int, int], int | None]) -> list[dict]:
    return [{"layers": layers, "prompt": prompt, "stream": stream, "parts_at": at} for (layers, prompt), at in parts.items()]


def test_paired_counts_prompt_by_prompt_and_never_parting_counts_as_the_length() -> None:
    rows = _rows("engine", {(2, 0): 30, (2, 1): None, (24, 0): 1, (24, 1): 5}) + \
        _rows("hf-bfloat16", {(2, 0): 38, (2, 1): 47, (24, 0): 3, (24, 1): 5}) + \
        [{"layers": 2, "stream": "engine", "summary": True, "parts_at": [30, 64]}]  # summaries are not prompts
    row = paired(rows, "engine", "hf-bfloat16", 64)
    assert (row["prompts"], row["later"], row["earlier"], row["same"]) == (4, 1, 2, 1)
    assert (row["sum_parts_at"], row["sum_parts_at_vs"]) == (30 + 64 + 1 + 5, 38 + 47 + 3 + 5)
    assert row["no_earlier"] is True
    assert paired(rows, "hf-bfloat16", "engine", 64)["no_earlier"] is False
