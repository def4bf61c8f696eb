"""The token multiplexer (csrc/decode/token_mux.h): one readable fd and one collect() for many
streams, each stream's tokens in order and equal to its own generate(), each end reported once."""
from __future__ import annotations

import select
from pathlib import Path
from typing import Iterator

import pytest

import cosyfast
from cosyfast import _core


@pytest.fixture(scope="module")
def model(tiny_cv2_dir: Path) -> Iterator[cosyfast.Model]:
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        yield m


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_collect_takes_every_stream_in_order(model: cosyfast.Model) -> None:
    opts = [dict(seed=i, min_len=40 + i, max_len=40 + i) for i in range(8)]
    refs = [model.generate([1, 2, 3 + i], **o) for i, o in enumerate(opts)]
    mux = _core.TokenMux()
    done_first = model.stream([1, 2, 3], **opts[0])
    assert done_first.wait(30)  # a stream that ended before it was added is reported at once
    streams = [done_first] + [model.stream([1, 2, 3 + i], **opts[i]) for i in range(1, 8)]  # held: a dropped
    for i, s in enumerate(streams):  # stream is cancelled
        mux.add(i, s)
    got: dict[int, list[int]] = {i: [] for i in range(8)}
    finished: list[int] = []
    wakes = 0
    while len(finished) < 8:
        assert _readable(mux.fd, 30), "the fd says when there is news"
        wakes += 1
        for key, tokens, need_text, ended in mux.collect():
            assert not need_text and not got[key] or key not in finished
            got[key] += tokens
            finished += [key] if ended else []
    assert [got[i] for i in range(8)] == refs
    assert sorted(finished) == list(range(8)) and len(mux) == 0
    assert wakes < sum(map(len, refs)), "tokens ready together are taken together"
    assert not _readable(mux.fd, 0.05) and mux.collect() == []
    again = [model.stream([1, 2, 3], seed=0, max_len=5) for _ in range(2)]
    mux.add(1, again[0])
    with pytest.raises(RuntimeError, match="already registered"):
        mux.add(1, again[1])
    with pytest.raises(RuntimeError, match="already attached"):
        mux.add(2, again[0])
    assert len(mux) == 1  # the refused registration left nothing behind


def test_bistream_asks_for_text_through_collect(model: cosyfast.Model) -> None:
    mux = _core.TokenMux()
    s = model.bistream([3, 4, 5], list(range(20, 52)), seed=9, max_len=300)
    mux.add(7, s)
    asked = False
    while not asked:
        assert _readable(mux.fd, 30)
        for key, _, need_text, ended in mux.collect():
            assert key == 7 and not ended
            asked = asked or need_text
    s.end_text()
    ended = False
    while not ended:
        assert _readable(mux.fd, 30)
        ended = any(e for _, _, _, e in mux.collect())
    assert s.finish_reason in ("stop_token", "max_len")
