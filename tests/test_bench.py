"""The benchmark on the CPU engine: its rows, files and the figures derived from engine counters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosyfast.bench.main import main, round_breakdown
from cosyfast.bench.metrics import summarize


def test_summarize_definitions() -> None:
    # two requests: tokens at 10/20/40 ms and 5/10 ms after their start, over a 0.05 s wall
    res = summarize("p", 2, 0.05, [[0.010, 0.020, 0.040], [0.005, 0.010]], None)
    assert res.tokens == 5
    assert res.tok_per_s == pytest.approx(100.0)
    assert res.ms_per_token_p50 == pytest.approx(10.0)  # gaps 10, 20, 5 ms
    assert res.first_token_ms_p50 == pytest.approx(7.5)
    assert res.rtf == pytest.approx(0.05 / (5 / 25))


def test_round_breakdown_iterations_per_round() -> None:
    profile0 = {"rounds": 10, "submit_s": 0.0, "wait_s": 0.0, "read_s": 0.0}
    profile1 = {"rounds": 30, "submit_s": 0.02, "wait_s": 0.1, "read_s": 0.04}
    before = {"rounds": 10, "engine_profiles": [profile0], "engine_iterations": 100}
    after = {"rounds": 30, "engine_profiles": [profile1], "engine_iterations": 130}
    out = round_breakdown(before, after)
    assert out["rounds"] == 20
    assert out["iterations_per_round"] == pytest.approx(1.5)
    assert out["wait_ms_per_round"] == pytest.approx(5.0)
    assert "iterations_per_round" not in round_breakdown({"rounds": 0}, {"rounds": 4})


def test_round_breakdown_turbomind_counts_graph_steps_in_the_run() -> None:
    before = {"engine_iterations": 5, "decode_graph_steps": {"replayed": 10, "captured": 2, "eager": 3, "failed": 0}}
    after = {"engine_iterations": 25, "decode_graph_steps": {"replayed": 28, "captured": 3, "eager": 4, "failed": 0}}
    out = round_breakdown(before, after)
    assert out == {"engine_iterations": 20, "decode_graph_steps": {"replayed": 18, "captured": 1, "eager": 1, "failed": 0}}
    # graphs off (the counters did not move): no graph entry
    assert round_breakdown(before, dict(before)) == {"engine_iterations": 0}


def test_bench_cpu_rows_and_files(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert main(["--checkpoint", str(tiny_cv2_dir), "--engine", "cpu", "--paths", "cosyfast", "--concurrency", "1,3",
                 "--new-tokens", "6", "--prompt-rows", "8", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["path"], r["concurrency"]) for r in rows] == [("cosyfast", 1), ("cosyfast", 3)]
    for r in rows:
        # every request runs to its token count: min_len/max_len are set from the workload
        assert r["tokens"] == 6 * r["concurrency"]
        assert r["tok_per_s"] > 0 and r["ms_per_token_p50"] <= r["ms_per_token_p99"]
        # prefill + 5 steps per request; the last round may be counted just after its token arrives
        assert r["extra"]["rounds"] >= 5
        assert r["meta"]["checkpoint"] == str(tiny_cv2_dir)
    table = (out / "results.md").read_text()
    assert table.count("| cosyfast |") == 2
    assert not list(out.glob("*.tmp*")), "no half-written files left behind"


def test_bench_host_path_rows(tiny_cv2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`host`: the same workload through cosyfast-load in a child process, on a bundle exported into
    the cache, each row compared with the in-process row of its concurrency."""
    monkeypatch.setenv("COSYFAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["--checkpoint", str(tiny_cv2_dir), "--engine", "cpu", "--paths", "cosyfast,host", "--concurrency", "1,3",
                 "--new-tokens", "6", "--prompt-rows", "8", "--repeats", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["path"], r["concurrency"]) for r in rows] == [("cosyfast", 1), ("cosyfast", 3), ("host", 1), ("host", 3)]
    for r in rows[2:]:
        assert r["tokens"] == 6 * r["concurrency"] and r["engine"] == "cpu"
        assert r["extra"]["finished"] == {"max_len": r["concurrency"]} and r["extra"]["live_sessions_after"] == 0
        assert isinstance(r["extra"]["overhead_us_per_token"], float)
        assert r["tok_per_s"] > 0 and r["first_token_ms_p50"] > 0 and r["host_rss_mb"] > 0
    assert len(list((tmp_path / "cache" / "bundles").glob("cosyvoice2-*/config.json"))) == 1
    assert (out / "results.md").read_text().count("| host |") == 2


def test_bench_rejects_unknown_path(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--paths", "cosyfast,warp-drive", "--out", str(tmp_path)])


def test_a_failing_serve_path_keeps_the_rows_measured_and_fails_the_run(
        tiny_cv2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A serve client broke at the last point of a GPU call and every row of it was lost: rows are
    written as they are measured (the serve rows too: serve_results yields each), and a failing
    out-of-process path is reported, not fatal."""
    import cosyfast.bench.serve_path as serve_path

    real = serve_path.run_serve

    def breaks_at_two_streams(url, work, reqs, procs, service=None):  # type: ignore[no-untyped-def]
        if len(reqs) == 2 and service is not None:  # the timed runs at 2 streams (not the warm-up)
            raise RuntimeError("a serve client failed: cut result line")
        return real(url, work, reqs, procs, service)

    monkeypatch.setattr(serve_path, "run_serve", breaks_at_two_streams)
    out = tmp_path / "bench"
    assert main(["--checkpoint", str(tiny_cv2_dir), "--engine", "cpu", "--paths", "cosyfast,serve", "--concurrency",
                 "1,2", "--new-tokens", "4", "--prompt-rows", "8", "--out", str(out)]) == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["path"], r["concurrency"]) for r in rows] == [("cosyfast", 1), ("cosyfast", 2), ("serve", 1)]
    err = capsys.readouterr().err
    assert "the serve path failed: RuntimeError: a serve client failed: cut result line" in err
    assert not list(out.glob("*.tmp*"))


def test_the_native_path_starts_through_model_start_and_needs_turbomind(tiny_cv2_dir: Path) -> None:
    """turbomind-native starts its requests through Model._start, as Model.stream does (the same
    Python per request before the engine; only the sampler differs), and says why it cannot run
    on the cpu engine."""
    import cosyfast
    from cosyfast.bench.runs import run_turbomind_native
    from cosyfast.bench.workload import Workload
    from cosyfast.model import request_options

    work = Workload(prompt_rows=8, new_tokens=4)
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        r = work.requests(1, m.kind)[0]
        options = dict(seed=3, top_k=1, ras=False, **work.length_options())
        assert m._start(r.text_ids, r.prompt_text_ids, r.prompt_speech_tokens, request_options(**options)).drain() == \
            m.stream(r.text_ids, r.prompt_text_ids, r.prompt_speech_tokens, **options).drain()
        with pytest.raises(ValueError, match="TurboMind's own sampler; this model runs on cpu"):
            run_turbomind_native(m, work, work.requests(2, m.kind))
