"""benchmarks/e2e/run.py --merge: one end-to-end table from several GPU calls (a call's device time
holds only some of the points), each point with the baseline of its own run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "e2e"))
import run  # noqa: E402


def _row(model: str, config: str, c: int, rtf: float) -> dict:
    return {"model": model, "config": config, "mode": "stream", "concurrency": c, "rtf_p50": rtf}


def _earlier(folder: Path, rows: list[dict], device: str = "NVIDIA H100", command: str = "run.py --a") -> Path:
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run.json").write_text(json.dumps({"device": device, "command": command}))
    return folder / "results.jsonl"


def test_points_join_and_this_runs_point_wins(tmp_path: Path) -> None:
    first = _earlier(tmp_path / "a", [_row("cosyvoice2", "upstream", 1, 1.5), _row("cosyvoice2", "upstream", 64, 40.0)])
    earlier = run.load_earlier([first], "NVIDIA H100")
    assert {r["measured_by"] for r in earlier} == {"run.py --a"}
    table = run.merge_rows(earlier, [_row("cosyvoice2", "upstream", 1, 1.4), _row("cosyvoice2", "cosyfast", 1, 0.4)])
    assert [(r["config"], r["concurrency"], r["rtf_p50"]) for r in table] == [
        ("cosyfast", 1, 0.4), ("upstream", 1, 1.4), ("upstream", 64, 40.0)]
    text = run.markdown(table, {"device": "NVIDIA H100", "upstream": {}, "cosyfast_commit": "x", "size": "full",
                                "fp16": True, "engine": "turbomind", "tokens": 100, "command": "run.py --b"})
    assert "`run.py --a`" in text and "run.py --b" in text


def test_another_device_or_a_bad_file_is_refused(tmp_path: Path) -> None:
    other = _earlier(tmp_path / "a", [_row("cosyvoice2", "upstream", 1, 1.5)], device="NVIDIA H200")
    with pytest.raises(SystemExit, match="measured on 'NVIDIA H200', this run is on 'NVIDIA H100'"):
        run.load_earlier([other], "NVIDIA H100")
    with pytest.raises(SystemExit, match="no file"):
        run.load_earlier([tmp_path / "missing.jsonl"], "NVIDIA H100")
    broken = _earlier(tmp_path / "b", [{"model": "cosyvoice2"}])
    with pytest.raises(SystemExit, match="line 1 is not a results row"):
        run.load_earlier([broken], "NVIDIA H100")
    alone = tmp_path / "c.jsonl"
    alone.write_text(json.dumps(_row("cosyvoice2", "upstream", 1, 1.5)) + "\n")
    with pytest.raises(SystemExit, match="no run.json beside"):
        run.load_earlier([alone], "NVIDIA H100")


class _SlowModel:
    """tts() as upstream's: chunks of audio; request 0 ends at once, the others stall after one chunk."""

    def __init__(self, timers: "_Timers") -> None:
        self.release = __import__("threading").Event()
        self.timers = timers

    def tts(self, uuid: str, stream: bool):  # type: ignore[no-untyped-def]
        import numpy as np

        self.timers.local.uuid = uuid  # as run.Timers' wrapper of llm_job records it
        yield {"tts_speech": np.zeros((1, run.upstream.SAMPLE_RATE // 2))}  # half a second
        if uuid != "r0":
            self.release.wait(30)


class _Request:
    def __init__(self, i: int) -> None:
        self.i = i

    def tts_kwargs(self) -> dict:
        return {"uuid": f"r{self.i}"}


class _Timers:
    def __init__(self) -> None:
        self.local = __import__("threading").local()


def test_a_point_past_its_timeout_reports_how_far_it_got(tmp_path: Path) -> None:
    """Upstream's 64-stream point never ended within a call: its row now says what it produced."""
    timers = _Timers()
    model = _SlowModel(timers)
    with pytest.raises(run.PointCut) as cut:
        run.run_point(model, timers, None, [_Request(i) for i in range(4)], 4, True, timeout=0.5)
    model.release.set()
    row = cut.value.row
    assert row["cut_after_s"] == 0.5 and row["first_chunks"] == 4 and row["requests"] == 4 and row["ended"] == 1
    assert row["audio_s_by_cut"] == 2.0 and 0 < row["audio_s_per_wall_s"] <= 4.0
    full = {"model": "cosyvoice2", "config": "upstream", "mode": "stream", "concurrency": 4, **row}
    text = run.markdown([full], {"device": "NVIDIA H100", "upstream": {}, "cosyfast_commit": "x", "size": "full",
                                 "fp16": True, "engine": "turbomind", "tokens": 100, "command": "run.py"})
    assert "cut at 0.5 s: 1 of 4 ended, 4 with a first chunk, 2 s of audio" in text
    # a cut point never replaces a whole one of an earlier run; a whole one replaces a cut one
    whole = {"model": "cosyvoice2", "config": "upstream", "mode": "stream", "concurrency": 4, "rtf_p50": 9.0}
    assert run.merge_rows([whole], [full]) == [whole]
    assert run.merge_rows([full], [whole]) == [whole]
