"""Streaming and cancellation under load, on the CPU engine with the tiny model.

Waves of 200 requests from several threads, with random lengths and random ends: read to the
end, cancel(), a dropped iterator, a closed CosyVoice generator, bistream requests cancelled
while they wait for text or run to their end. Every request must end; afterwards no session may
be left (the scheduler's live and parked counts, the engine's caches), and the process's memory
must stay flat from wave to wave.
"""
from __future__ import annotations

import gc
import random
import threading
import time
from collections import Counter

import pytest
import torch

import cosyfast
from cosyfast import _core
from cosyfast.cosyvoice import CosyVoiceLLM

SESSIONS = 200
THREADS = 8
WAVES = 6
TIMEOUT = 30.0        # seconds any single read may wait before the test calls it a hang
RSS_SLACK_MB = 12.0   # growth allowed between the second and the last wave
KINDS_OF_END = ("drain", "cancel", "drop", "close_generator", "bistream_cancel", "bistream_full")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _ids(values: list[int]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.int32)


def _text(rng: random.Random) -> list[int]:
    return [rng.randrange(0, 151000) for _ in range(rng.randint(1, 6))]


def _run_one(model: cosyfast.Model, llm: CosyVoiceLLM, how: str, rng: random.Random) -> str:
    """One request ended the way `how` says; returns how it ended."""
    seed = rng.randrange(1 << 30)
    if how == "drain":
        max_len = rng.randint(1, 40)
        s = model.stream(_text(rng), seed=seed, max_len=max_len)
        tokens = []
        while (t := s.next(TIMEOUT)) is not None:
            tokens.append(t)
        assert len(tokens) <= max_len and s.finished
        return s.finish_reason
    if how in ("cancel", "drop"):
        s = model.stream(_text(rng), seed=seed, max_len=rng.randint(20, 400))
        for _ in range(rng.randint(0, 6)):
            if s.next(TIMEOUT) is None:
                break
        if how == "drop":
            del s  # the iterator's owner lets go: the session is cancelled
            return "dropped"
        s.cancel()
        while s.next(TIMEOUT) is not None:  # tokens queued before the cancel stay readable
            pass
        return s.finish_reason
    if how == "close_generator":
        text = _text(rng)
        gen = llm.inference(_ids(text), torch.tensor([len(text)]), _ids([]), torch.tensor([0]), _ids([]),
                            torch.tensor([0]), torch.zeros(0, 192))
        for _ in range(rng.randint(0, 6)):
            if next(gen, None) is None:
                break
        gen.close()  # returns once the engine session is freed
        return "closed"
    if how == "bistream_cancel":
        s = model.bistream([], [rng.randrange(6561) for _ in range(rng.randint(0, 20))], seed=seed)
        answers = rng.randint(0, 4)
        while (event := s.next_event(TIMEOUT)) is not None:
            if event == _core.Stream.NEED_TEXT:
                if answers == 0:
                    break  # cancel while it waits for text (parked, holding its cache)
                answers -= 1
                s.push_text(_text(rng))
            elif rng.random() < 0.05:
                break      # cancel mid-decode
        s.cancel()
        assert s.wait(TIMEOUT)
        return s.finish_reason
    if how == "bistream_full":
        pieces = [_text(rng) for _ in range(rng.randint(0, 4))]
        tokens = list(llm.inference_bistream((_ids(p) for p in pieces), _ids([]), torch.tensor([0]), _ids([]),
                                             torch.tensor([0]), torch.zeros(0, 192), max_token_text_ratio=3))
        assert len(tokens) <= 3 * sum(len(p) for p in pieces)
        return "bistream_done"
    raise ValueError(how)


def _wave(model: cosyfast.Model, llm: CosyVoiceLLM, wave: int) -> Counter:
    rng = random.Random(wave)
    jobs = [rng.choice(KINDS_OF_END) for _ in range(SESSIONS)]
    outcomes: list[str | None] = [None] * SESSIONS
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        r = random.Random(wave * 1000 + first)
        try:
            for i in range(first, SESSIONS, THREADS):
                outcomes[i] = _run_one(model, llm, jobs[i], r)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]
    assert None not in outcomes, "a request never ended"
    gc.collect()
    deadline = time.monotonic() + 10
    while model.live_sessions and time.monotonic() < deadline:  # dropped streams cancel at a round start
        time.sleep(0.01)
    assert model.live_sessions == 0
    assert model.parked_sessions == 0
    assert model.engine_live_sessions == 0
    return Counter(outcomes)


@pytest.fixture(scope="module")
def model(tiny_cv2_dir):
    m = cosyfast.load(tiny_cv2_dir, engine="cpu", max_session_len=1024)
    yield m
    m.close()


def test_waves_of_cancelled_streams_leak_nothing(model):
    llm = CosyVoiceLLM(model)
    start = time.monotonic()
    rss = []
    seen: Counter = Counter()
    for wave in range(WAVES):
        seen += _wave(model, llm, wave)
        gc.collect()
        rss.append(_rss_mb())
    elapsed = time.monotonic() - start
    # every way of ending happened, and cancels did cancel
    for outcome in ("dropped", "closed", "bistream_done", "cancelled"):
        assert seen[outcome] > 0, (outcome, seen)
    assert seen["max_len"] > 0
    # memory: the first waves warm the allocator up; after that it stays flat
    assert rss[-1] - rss[1] < RSS_SLACK_MB, f"RSS per wave (MB): {rss}"
    assert elapsed < 120, f"{elapsed:.1f} s"
    print(f"RSS per wave (MB): {[round(r, 1) for r in rss]}; ends: {dict(seen)}; {elapsed:.1f} s")
