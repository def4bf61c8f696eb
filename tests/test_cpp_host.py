"""The C++ host program (tools/cosyfast_host.cc, over include/cosyfast/c_api.h) against Python.

`cosyfast-host` loads an exported CPU bundle without Python and runs the same C++ core as
`cosyfast.load(..., engine="cpu")`, so for the same request and seed its tokens must be identical,
greedy or sampled. Also: the token callback can stop a request early, and a missing, corrupt or
mismatched bundle fails with exit status 1 and a sentence naming the problem.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cosyfast
from cosyfast import cli
from cosyfast.bundle import export_cpu_bundle, host_program, write_safetensors
from cosyfast.checkpoint import load_checkpoint

EOP = 151646  # <|endofprompt|>, required in CosyVoice3 texts
KINDS = ("cosyvoice2", "cosyvoice3")
# (text_ids, prompt_text_ids, prompt_speech_tokens)
REQUESTS = {
    "cosyvoice2": ([9906, 1879, 11, 1246, 374, 151935, 0], [40, 1079, 1661], [12, 500, 6560, 0, 4000]),
    "cosyvoice3": ([1000, 2000, 30000, 77, 5], [2610, 525, 264, EOP], [12, 500, 6560, 0, 4000]),
}
OPTIONS = {
    "greedy": dict(top_k=1, ras=False, seed=0, max_len=40),
    "ras_seed7": dict(seed=7, max_len=40),
    # top_k 1 repeats tokens, so RAS re-draws often: exercises win_size, tau_r and the old rule
    # (the re-draw may pick the repeated token). min_len keeps CosyVoice3 from stopping early.
    "ras_redraws_old_rule": dict(seed=8, top_k=1, exclude_repeated=False, win_size=4, tau_r=0.5, min_len=30,
                                 max_len=40),
    "nucleus_no_ras": dict(seed=3, ras=False, top_p=0.5, top_k=10, min_len=0, max_len=40),
    # No max_len: the default ratios (min 2x, max 20x the text length) decide where it ends.
    "ras_default_lengths": dict(seed=11),
    "ras_length_ratios": dict(seed=12, min_token_text_ratio=1.5, max_token_text_ratio=4.0),
}


def _flags(options: dict) -> list[str]:
    names = {"seed": "--seed", "top_k": "--top-k", "top_p": "--top-p", "win_size": "--win-size",
             "tau_r": "--tau-r", "max_len": "--max-len", "min_len": "--min-len",
             "min_token_text_ratio": "--min-token-text-ratio", "max_token_text_ratio": "--max-token-text-ratio"}
    out = []
    for key, value in options.items():
        if key == "ras":
            out += [] if value else ["--no-ras"]
        elif key == "exclude_repeated":
            out += [] if value else ["--include-repeated"]
        else:
            out += [names[key], str(value)]
    return out


def _ids(ids) -> str:
    return ",".join(map(str, ids))


def run_host(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([str(host_program()), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def host_tokens(bundle: Path, kind: str, options: dict, *extra: str) -> tuple[list[int], str]:
    text, prompt_text, prompt_speech = REQUESTS[kind]
    proc = run_host(bundle, "--text", _ids(text), "--prompt-text", _ids(prompt_text),
                    "--prompt-speech", _ids(prompt_speech), *_flags(options), *extra, check=True)
    tokens = [int(t) for t in proc.stdout.split()]
    summary = re.fullmatch(r"finish_reason=(\w+) tokens=(\d+)", proc.stderr.strip().splitlines()[-1])
    assert summary and int(summary[2]) == len(tokens), proc.stderr
    return tokens, summary[1]


@pytest.fixture(scope="module")
def models(tiny_dirs):
    loaded = {kind: cosyfast.load(d, engine="cpu") for kind, d in tiny_dirs.items()}
    yield loaded
    for m in loaded.values():
        m.close()


def python_tokens(model, kind: str, options: dict) -> tuple[list[int], str]:
    stream = model.stream(*REQUESTS[kind], **options)
    tokens = stream.drain()
    return tokens, stream.finish_reason


# --- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_host_matches_python(bundles, models, kind, case, mode):
    options = OPTIONS[case]
    expected, expected_reason = python_tokens(models[kind], kind, options)
    extra = ("--stream",) if mode == "stream" else ()
    tokens, reason = host_tokens(bundles[kind], kind, options, *extra)
    assert len(expected) > 0
    assert tokens == expected
    assert reason == expected_reason


@pytest.mark.parametrize("kind", KINDS)
def test_seed_and_options_change_the_host_output(bundles, kind):
    """The parity test would pass vacuously if the host ignored its options; it does not."""
    base, _ = host_tokens(bundles[kind], kind, OPTIONS["ras_seed7"])
    other_seed, _ = host_tokens(bundles[kind], kind, {**OPTIONS["ras_seed7"], "seed": 70})
    greedy, _ = host_tokens(bundles[kind], kind, OPTIONS["greedy"])
    short, reason = host_tokens(bundles[kind], kind, {**OPTIONS["greedy"], "max_len": 5, "min_len": 5})
    redraws = OPTIONS["ras_redraws_old_rule"]
    old_rule, _ = host_tokens(bundles[kind], kind, redraws)
    new_rule, _ = host_tokens(bundles[kind], kind, {**redraws, "exclude_repeated": True})
    other_window, _ = host_tokens(bundles[kind], kind, {**redraws, "win_size": 10, "tau_r": 0.1})
    no_ras, _ = host_tokens(bundles[kind], kind, {**redraws, "ras": False})
    assert base != other_seed
    assert base != greedy
    assert short == greedy[:5] and reason == "max_len"
    assert len({tuple(old_rule), tuple(new_rule), tuple(other_window), tuple(no_ras)}) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_tables_match_python(bundles, tiny_dirs, kind):
    options = OPTIONS["ras_seed7"]
    with cosyfast.load(tiny_dirs[kind], engine="cpu", table_dtype="bfloat16") as model:
        expected, _ = python_tokens(model, kind, options)
    tokens, _ = host_tokens(bundles[kind], kind, options, "--table-dtype", "bfloat16")
    assert tokens == expected


def test_replicas_give_the_same_tokens_and_bad_counts_are_refused(bundles, models):
    """The C API's pool (decode/pool.h, the pick Python's Model uses too): a request's tokens do
    not depend on which replica runs it."""
    options = OPTIONS["ras_seed7"]
    expected, _ = python_tokens(models["cosyvoice2"], "cosyvoice2", options)
    tokens, _ = host_tokens(bundles["cosyvoice2"], "cosyvoice2", options, "--replicas", "3")
    assert tokens == expected
    text, prompt_text, prompt_speech = REQUESTS["cosyvoice2"]
    proc = run_host(bundles["cosyvoice2"], "--text", _ids(text), "--replicas", "0")
    assert proc.returncode != 0 and "replicas must be in [1, 64], got 0" in proc.stderr


@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_stop_after_stops_early(bundles, kind, mode):
    options = OPTIONS["ras_seed7"]
    full, full_reason = host_tokens(bundles[kind], kind, options)
    extra = ("--stream",) if mode == "stream" else ()
    stopped, reason = host_tokens(bundles[kind], kind, options, "--stop-after", "6", *extra)
    assert len(full) > 6 and full_reason != "cancelled"
    assert stopped == full[:6]
    assert reason == "cancelled"


# --- the bundle format -------------------------------------------------------------------------

def test_bundle_is_standard_safetensors(bundles, tiny_dirs):
    """Any safetensors reader loads the weights, and they are the checkpoint's, bit for bit."""
    from safetensors.numpy import load_file

    for kind in KINDS:
        w = load_checkpoint(tiny_dirs[kind])
        tensors = load_file(str(bundles[kind] / "weights.safetensors"))
        np.testing.assert_array_equal(tensors["text_embedding"], w.text_embedding)
        np.testing.assert_array_equal(tensors["decoder_weight"], w.decoder_weight)
        np.testing.assert_array_equal(tensors["sos"], w.sos)
        np.testing.assert_array_equal(tensors["layers.1.mlp.down_proj.weight"], w.layers[1]["mlp.down_proj.weight"])
        assert ("decoder_bias" in tensors) == (kind == "cosyvoice2")
        config = json.loads((bundles[kind] / "config.json").read_text())
        assert config["format"] == "cosyfast-cpu-bundle" and config["kind"] == kind
        assert config["vocab"] == {k: w.vocab[k] for k in config["vocab"]}


def test_export_is_atomic_and_refuses_to_clobber(tiny_dirs, tmp_path):
    w = load_checkpoint(tiny_dirs["cosyvoice2"])
    out = export_cpu_bundle(w, tmp_path / "b")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_cpu_bundle(w, out)
    (out / "stale").write_text("x")
    export_cpu_bundle(w, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary or old directory left
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.safetensors"]


def test_cli_export_bundle(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "cli-bundle"
    assert cli.main(["export-bundle", str(tiny_dirs["cosyvoice3"]), str(out)]) == 0
    assert "cosyfast-host" in capsys.readouterr().out
    proc = run_host(out, "--text", f"{EOP},5,6", "--top-k", "1", "--no-ras", "--max-len", "3", "--info", check=True)
    assert len(proc.stdout.split()) == 3
    assert "cosyvoice3" in proc.stderr
    assert cli.main(["export-bundle", str(tiny_dirs["cosyvoice3"]), str(out)]) == 2  # exists


# --- failures ----------------------------------------------------------------------------------

def _broken_copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def _edit_config(bundle: Path, edit) -> None:
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _expect_failure(bundle, pattern: str, *args: str) -> None:
    proc = run_host(bundle, "--text", "1,2,3", *args)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("cosyfast-host: error: "), proc.stderr
    assert pattern in proc.stderr, proc.stderr


def test_missing_bundle(tmp_path):
    _expect_failure(tmp_path / "nowhere", "is not a cosyfast CPU bundle: cannot open")
    _expect_failure(tmp_path, "is not a cosyfast CPU bundle")  # a directory without config.json


def test_truncated_weights(bundles, tmp_path):
    b = _broken_copy(bundles["cosyvoice2"], tmp_path / "b")
    weights = b / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    _expect_failure(b, "runs past the end of the data region")
    _expect_failure(b, "truncated or corrupt")
    weights.write_bytes(data[:5])
    _expect_failure(b, "too short for a safetensors file")


def test_garbage_weights(bundles, tmp_path):
    b = _broken_copy(bundles["cosyvoice2"], tmp_path / "b")
    (b / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _expect_failure(b, "the header is not valid JSON")
    (b / "weights.safetensors").write_bytes(os.urandom(4096))
    _expect_failure(b, "not a safetensors file")


def test_corrupt_config(bundles, tmp_path):
    b = _broken_copy(bundles["cosyvoice3"], tmp_path / "b")
    config = (b / "config.json").read_text()
    (b / "config.json").write_text(config[: len(config) // 2])
    _expect_failure(b, "config.json: invalid JSON at byte")
    (b / "config.json").write_text("[1, 2]")
    _expect_failure(b, "not a cosyfast CPU bundle config")


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: c.update(format_version=2), "format_version 2 is not supported"),
    (lambda c: c["model"].update(hidden_size=32),
     "tensor 'text_embedding' has shape [151936, 64], expected [text_vocab, 32]"),
    (lambda c: c["model"].update(num_hidden_layers=3), "\"model\"[\"num_hidden_layers\"] is 3 but"),
    (lambda c: c["model"].update(num_hidden_layers=1), "\"model\"[\"num_hidden_layers\"] is 1 but"),
    (lambda c: c["model"].pop("rope_theta"), "\"model\" is missing \"rope_theta\""),
    (lambda c: c["model"].update(head_dim=16.5), "[\"head_dim\"]: expected an integer, got 16.5"),
    (lambda c: c["vocab"].update(eos=5), "eos 5 must be one of the stop ids"),
    (lambda c: c.update(kind="cosyvoice2"), "\"kind\" is \"cosyvoice2\" but \"vocab\" names \"cosyvoice3\""),
    (lambda c: c.update(weights="../elsewhere.safetensors"), "must be a file name inside the bundle"),
])
def test_mismatched_config(bundles, tmp_path, edit, pattern):
    b = tmp_path / "b"
    b.mkdir()
    os.symlink(bundles["cosyvoice3"] / "weights.safetensors", b / "weights.safetensors")
    shutil.copy(bundles["cosyvoice3"] / "config.json", b / "config.json")
    _edit_config(b, edit)
    _expect_failure(b, pattern)


def test_wrong_dtype_and_missing_tensor(bundles, tiny_dirs, tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(bundles["cosyvoice3"] / "config.json", b / "config.json")
    w = load_checkpoint(tiny_dirs["cosyvoice3"])
    from cosyfast.bundle import _tensors

    tensors = dict(_tensors(w))
    del tensors["norm"]
    write_safetensors(b / "weights.safetensors", tensors)
    _expect_failure(b, "has no tensor 'norm'")


def test_bad_requests_fail_with_the_core_message(bundles):
    _expect_failure(bundles["cosyvoice2"], "text id: id 151936 is outside [0, 151936)", "--text", "5,151936")
    _expect_failure(bundles["cosyvoice2"], "prompt speech token 6561 is outside [0, 6561)", "--prompt-speech", "6561")
    _expect_failure(bundles["cosyvoice3"], "<|endofprompt|>")
    _expect_failure(bundles["cosyvoice2"], "top_p must be in (0, 1], got 1.5", "--top-p", "1.5")
    _expect_failure(bundles["cosyvoice2"], "max_session_len must be >= 1", "--max-session-len", "0")


@pytest.mark.parametrize("args, pattern", [  # CLI11's sentences, but for the id lists (ours)
    ([], r"BUNDLE_DIR is required"),
    (["B"], r"--text is required"),
    (["B", "--text", "1,x"], r"--text: 'x' is not an integer"),
    (["B", "--text", "1", "--seed"], r"--seed: .*required.*missing"),
    (["B", "--text", "1", "--bogus"], r"not expected: --bogus"),
])
def test_usage_errors(args, pattern):
    proc = run_host(*args)
    assert proc.returncode == 2
    assert re.search(pattern, proc.stderr) and "usage: cosyfast-host" in proc.stderr, proc.stderr


# --- the public headers ------------------------------------------------------------------------

INCLUDE_DIR = Path(__file__).resolve().parents[1] / "include"


@pytest.mark.parametrize("compiler, flags, source", [
    ("cc", ["-x", "c", "-std=c99"], '#include "cosyfast/c_api.h"\nint main(void) {\n'
     "  CosyfastRequestOptions o = cosyfast_request_options_default();\n  (void)o;\n  return 0;\n}\n"),
    ("c++", ["-x", "c++", "-std=c++17"], '#include "cosyfast/cosyfast.hpp"\nint main() {\n'
     "  cosyfast::api::Options o = cosyfast::api::DefaultOptions();\n  (void)o;\n  return 0;\n}\n"),
])
def test_public_headers_compile(tmp_path, compiler, flags, source):
    """c_api.h is plain C99 and cosyfast.hpp plain C++17, warning-free (syntax only: the wheel
    ships the host program, not the library)."""
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip(f"no {compiler} on PATH")
    src = tmp_path / "use_api.txt"
    src.write_text(source)
    proc = subprocess.run([exe, *flags, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-pedantic",
                           f"-I{INCLUDE_DIR}", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
