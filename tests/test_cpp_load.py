"""The C++ load harness (tools/cosyfast_load.cc, over include/cosyfast/cosyfast.hpp) on the CPU engine.

`cosyfast-load` runs many streaming requests from many threads on one model. Here: every request
ends, the cancelled ones say so and stop, no session is left behind, the counts add up; the tokens
of each request (run among many others) equal Python's for the same input and seed; bad usage and
bad input fail with exit status 2 and 1 and a sentence.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import cosyfast
from cosyfast import _core
from cosyfast.bundle import host_program, load_program

EOP = 151646  # <|endofprompt|>, required in CosyVoice3 texts
KINDS = ("cosyvoice2", "cosyvoice3")
# Small prompts keep a run of dozens of requests to about a second on 2 cores.
SMALL = ("--text-len", "8", "--prompt-text-len", "4", "--prompt-speech-len", "10")


def run_load(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([str(load_program()), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env)


def load_report(*args: object) -> dict:
    proc = run_load(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def read_lines(path: Path, kind=int) -> list[list]:
    return [[kind(x) for x in line.split()] for line in path.read_text().splitlines()]


# --- many threads, some cancelled -------------------------------------------------------------

@pytest.mark.parametrize("cancel_from", ["other", "same"])
@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_requests_with_cancels(bundles, tmp_path, kind, cancel_from):
    tokens_out, times_out = tmp_path / "tokens.txt", tmp_path / "times.txt"
    report = load_report(bundles[kind], "--threads", 32, "--num-requests", 64, *SMALL, "--max-len", 30,
                         "--cancel-every", 4, "--cancel-after", 5, "--cancel-from", cancel_from,
                         "--tokens-out", tokens_out, "--times-out", times_out)
    assert report["engine"] == "cpu" and report["threads"] == 32 and report["requests"] == 64
    assert report["cancel_requested"] == 16 and report["cancelled"] == 16
    assert report["finished"] == {"cancelled": 16, "max_len": 48}
    assert report["live_sessions_after"] == 0
    tokens, times = read_lines(tokens_out), read_lines(times_out, float)
    assert len(tokens) == 64 and [len(t) for t in times] == [len(t) for t in tokens]
    assert report["tokens"] == sum(map(len, tokens))
    for i, t in enumerate(tokens):
        if i % 4 == 3:  # cancelled after its 5th token: it stops well before max_len
            assert 5 <= len(t) < 30, (i, len(t))
        else:
            assert len(t) == 30, (i, len(t))  # min_len = max_len: none stops early
    assert report["tokens_after_cancel_max"] < 25
    for arrivals in times:
        assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert 0 < report["first_token_ms_p50"] <= report["first_token_ms_p90"]
    assert report["wall_s"] > 0 and report["tokens_per_s"] == pytest.approx(report["tokens"] / report["wall_s"], rel=1e-3)


def test_generated_requests_follow_their_seed(bundles, tmp_path):
    """Generated request i is made from seed base + i alone (its ids and its sampling): no two are
    the same, the thread count changes nothing, and base 1 gives base 0's requests shifted by one."""
    out_a, out_b, out_c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    common = (bundles["cosyvoice2"], "--num-requests", 8, *SMALL, "--max-len", 10, "--warmup", 0)
    load_report(*common, "--tokens-out", out_a, "--threads", 8)
    load_report(*common, "--tokens-out", out_b, "--threads", 3)
    load_report(*common, "--tokens-out", out_c, "--threads", 8, "--seed", 1)
    a, b, c = read_lines(out_a), read_lines(out_b), read_lines(out_c)
    assert a == b
    assert len({tuple(t) for t in a}) == 8
    assert c[:7] == a[1:]


# --- parity with Python -------------------------------------------------------------------------

def _requests(kind: str) -> list[dict]:
    """Requests of several shapes and options, by the C API's names (ras/exclude_repeated as 0/1)."""
    eop = [EOP] if kind == "cosyvoice3" else []
    out = []
    for i in range(12):
        options = [dict(seed=i, max_len=25), dict(seed=100 + i, top_k=1, ras=0, max_len=20),
                   dict(seed=i, top_p=0.5, top_k=10, win_size=4, tau_r=0.5, exclude_repeated=0, min_len=10, max_len=30),
                   dict(seed=7 * i, min_token_text_ratio=1.5, max_token_text_ratio=4.0)][i % 4]
        out.append(dict(text_ids=[1000 + i, 2000, 30000 + 7 * i, 77, 5], prompt_text_ids=[40 + i, 1079, 1661, *eop],
                        prompt_speech_tokens=[12 + i, 500, 6560, 0, 4000][: 1 + i % 5], **options))
    return out


def _requests_file(requests: list[dict], path: Path) -> Path:
    def field(key, value):
        return f"{key}={','.join(map(str, value))}" if isinstance(value, list) else f"{key}={value}"

    path.write_text("# one request a line\n" + "".join(" ".join(field(k, v) for k, v in r.items()) + "\n"
                                                     for r in requests))
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_match_python(bundles, tiny_dirs, tmp_path, kind):
    requests = _requests(kind)
    tokens_out = tmp_path / "tokens.txt"
    report = load_report(bundles[kind], "--requests", _requests_file(requests, tmp_path / "requests.txt"),
                         "--threads", 16, "--cancel-every", 5, "--cancel-after", 3, "--tokens-out", tokens_out)
    assert report["requests"] == 12 and report["cancelled"] == 2 and report["live_sessions_after"] == 0
    got = read_lines(tokens_out)
    with cosyfast.load(tiny_dirs[kind], engine="cpu") as model:
        for i, r in enumerate(requests):
            ids = {k: r[k] for k in ("text_ids", "prompt_text_ids", "prompt_speech_tokens")}
            options = {k: bool(v) if k in ("ras", "exclude_repeated") else v for k, v in r.items() if k not in ids}
            expected = model.generate(ids["text_ids"], ids["prompt_text_ids"], ids["prompt_speech_tokens"], **options)
            assert len(expected) > 3
            if i % 5 == 4:  # cancelled after 3 tokens: what it made is the start of the whole answer
                assert 3 <= len(got[i]) < len(expected) and got[i] == expected[: len(got[i])], i
            else:
                assert got[i] == expected, i


# --- failures -----------------------------------------------------------------------------------

# CLI11's sentences (its wording differs a little between releases: the patterns ask for the flag
# and the problem, not the exact words).
@pytest.mark.parametrize("args, pattern", [
    ([], r"BUNDLE_DIR is required"),
    (["B", "--threads", "0"], r"--threads: .*\b0\b.*\b1\b.*\b4096\b"),
    (["B", "--num-requests"], r"--num-requests: .*required.*missing"),
    (["B", "--bogus"], r"not expected: --bogus"),
    (["B", "C"], r"not expected: C"),
    (["B", "--engine", "gpu"], r"--engine: gpu not in \{cpu,turbomind\}"),
    (["B", "--cancel-from", "elsewhere"], r"--cancel-from: elsewhere not in \{other,same\}"),
    (["B", "--max-len", "5", "--min-len", "6"], r"--min-len is above --max-len"),
    (["B", "--requests", "R", "--text-len", "3"], r"--(requests|text-len) excludes --(text-len|requests)"),
])
def test_usage_errors(args, pattern):
    proc = run_load(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("cosyfast-load: ") and re.search(pattern, proc.stderr.splitlines()[0]), proc.stderr
    assert "usage: cosyfast-load" in proc.stderr


def test_help():
    proc = run_load("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cosyfast-load") and "--engine" in proc.stdout


def _expect_error(pattern: str, *args: object) -> None:
    proc = run_load(*args)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("cosyfast-load: error: ") and pattern in proc.stderr, proc.stderr


def test_bad_bundle_and_bad_requests(bundles, tmp_path):
    _expect_error("is not a cosyfast CPU bundle: cannot open", tmp_path / "nowhere")
    _expect_error("is not a cosyfast CPU bundle", tmp_path)  # a directory without config.json
    b = bundles["cosyvoice2"]
    _expect_error("cannot open the requests file", b, "--requests", tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("text_ids=1,2,3 max_len=5\n\ntext_ids=4 colour=blue\n")
    _expect_error(f"{bad}:3: unknown field 'colour'", b, "--requests", bad)
    bad.write_text("text_ids=1,x\n")
    _expect_error(f"{bad}:1: text_ids: 'x' is not an integer", b, "--requests", bad)
    bad.write_text("seed=3\n")
    _expect_error(f"{bad}:1: no text_ids", b, "--requests", bad)
    bad.write_text("# nothing\n")
    _expect_error("holds no request", b, "--requests", bad)
    bad.write_text("text_ids=1,2 max_len=4 min_len=4\ntext_ids=5,151936\n")
    _expect_error("request 1: text id: id 151936 is outside [0, 151936)", b, "--requests", bad, "--warmup", 0)
    _expect_error("--num-requests 3 but", b, "--requests", bad, "--num-requests", 3)
    _expect_error("max_batch", b, "--max-batch", 0, "--num-requests", 1)


@pytest.mark.parametrize("program", ["host", "load"])
def test_model_flags_of_both_programs(bundles, program):
    """cosyfast-host and cosyfast-load read the model flags alike (tools/host_flags.h); the C API
    checks their values. This build has no GPU engine, so --engine turbomind fails with its reason."""
    request = ("--text", "1,2,3", "--max-len", "3") if program == "host" else ("--num-requests", "2", "--max-len", "3")

    def run(*args):
        exe = host_program() if program == "host" else load_program()
        return subprocess.run([str(exe), str(bundles["cosyvoice2"]), *request, *map(str, args)], capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))

    prefix = f"cosyfast-{program}: "
    ok = run("--engine", "cpu", "--device", 0, "--gpu-memory", 0, "--max-batch", 4, "--max-session-len", 512,
             "--replicas", 2, "--table-dtype", "bfloat16")
    assert ok.returncode == 0, ok.stderr
    bad = run("--engine", "gpu")
    assert bad.returncode == 2 and bad.stderr.startswith(prefix + "--engine: gpu not in {cpu,turbomind}"), bad.stderr
    bad = run("--gpu-memory", "lots")
    assert bad.returncode == 2 and re.search(r"--gpu-memory.*lots", bad.stderr.splitlines()[0]), bad.stderr
    for args in (("--max-batch", 0), ("--device", 1)):
        bad = run(*args)
        assert bad.returncode == 1 and bad.stderr.startswith(prefix + "error: ") and bad.stdout == "", bad.stderr
    if not _core.build_info()["with_turbomind"]:
        bad = run("--engine", "turbomind")
        assert bad.returncode == 1 and "turbomind" in bad.stderr, bad.stderr


def test_load_program_override(monkeypatch, tmp_path):
    assert load_program().name == "cosyfast-load" and os.access(load_program(), os.X_OK)
    monkeypatch.setenv("COSYFAST_LOAD", str(tmp_path / "elsewhere"))
    assert load_program() == tmp_path / "elsewhere"
