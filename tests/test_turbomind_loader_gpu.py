"""TurboMind's weights loaded from C++ (csrc/engines/turbomind/tm_loader.h) against lmdeploy's own
Python converter, on the GPU, for the full-size synthetic CosyVoice2 and CosyVoice3: the same
engine config, the same bytes in every weight tensor, bit-identical logits, the same tokens; then
the C API on the GPU engine (cosyfast-host and cosyfast-load, no Python in their process): the
same tokens as the Python package for the same seed, 64 threaded requests with cancels leaving
nothing live, and sentences (never an abort) for a bad bundle or a missing GPU. Skipped cleanly
where there is no NVIDIA GPU, no TurboMind build, or no lmdeploy (the reference converter)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpu_skip import require_gpu_engine

torch = pytest.importorskip("torch")
require_gpu_engine(needs_lmdeploy=True)

import cosyfast
from cosyfast import _core
from cosyfast.bundle import export_cpu_bundle, host_program, load_program
from cosyfast.checkpoint import load_checkpoint
from cosyfast.synthetic import ensure_default_model
from test_turbomind_gpu import report, request, variant

pytestmark = pytest.mark.gpu
CACHE = 0.03  # a small KV cache each: two engines share the GPU in this process


def _load(weights, loader: str, gemm: Path, first: bool):
    """A Model on one engine. GEMM kernels are picked by timing while the engine is created, so two
    engines with the same weights may differ in the last bits: the first load measures and writes
    its picks (TM_GEMM_EXPORT), every later load reads them (TM_GEMM_IMPORT)."""
    os.environ.pop("TM_GEMM_EXPORT", None)
    os.environ.pop("TM_GEMM_IMPORT", None)
    os.environ["TM_GEMM_EXPORT" if first else "TM_GEMM_IMPORT"] = str(gemm)
    try:
        return cosyfast.load(weights, engine="turbomind", loader=loader, max_batch=64, replicas=1,
                             cache_max_entry_count=CACHE)
    finally:
        os.environ.pop("TM_GEMM_EXPORT", None)
        os.environ.pop("TM_GEMM_IMPORT", None)


@pytest.fixture(scope="module", params=["cosyvoice2", "cosyvoice3"])
def pair(request, tmp_path_factory):
    kind = request.param
    weights = load_checkpoint(ensure_default_model(kind=kind, size="full"))
    gemm = tmp_path_factory.mktemp(f"gemm-{kind}") / "gemm.tsv"
    seen: list = []
    original = _core._create_turbomind

    def recording(model_dir, engine_config):  # the EngineConfig lmdeploy's path builds
        seen.append(engine_config)
        return original(model_dir, engine_config)

    _core._create_turbomind = recording
    try:
        reference = _load(weights, "lmdeploy", gemm, first=True)
    finally:
        _core._create_turbomind = original
    ours = _load(weights, "cpp", gemm, first=False)
    yield kind, weights, reference, ours, seen[0], gemm
    ours.close()
    reference.close()
    torch.cuda.empty_cache()


def _config_fields(config) -> dict:
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_") and not callable(getattr(config, k))}


def test_the_engine_config_is_lmdeploys(pair):
    _, _, _, _, lmdeploy_config, _ = pair
    mine = _core._turbomind_engine_config(device=0, max_batch=64, max_session_len=_core.DEFAULTS["max_session_len"],
                                          cache_max_entry_count=lmdeploy_config.cache_max_block_count)
    want, got = _config_fields(lmdeploy_config), _config_fields(mine)
    assert len(want) > 20 and want == got, {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}


def test_every_weight_tensor_has_the_same_bytes(pair):
    kind, weights, reference, ours, _, _ = pair
    want = _core._turbomind_weight_digest(reference._backends[0].model_comm)
    got = _core._turbomind_weight_digest(ours._backends[0])
    report(test="loader_digest", kind=kind, tensors=len(want), differing=sorted(k for k in want if want[k] != got.get(k)))
    # 24 layers x (w_qkv weight and bias, wo, w1w3, w2, two norms) + embeddings, output, norm
    assert len(want) == weights.config["num_hidden_layers"] * 7 + 3 and set(got) == set(want)
    assert [k for k in want if want[k] != got[k]] == []


def _specs(kind: str, weights) -> list[tuple[list[int], np.ndarray, list[tuple[int, int]]]]:
    """(ids, rows, row ranges): speech ids alone; a prompt of rows then speech ids; a prompt longer
    than one 64-position cache block, rows in two ranges."""
    rng = np.random.default_rng(7)
    hidden = weights.config["hidden_size"]
    speech = lambda n: rng.integers(0, 6561, n).tolist()  # noqa: E731
    rows = lambda n: (rng.standard_normal((n, hidden)) * 0.05).astype(np.float32)  # noqa: E731
    return [(speech(40), np.zeros((0, hidden), np.float32), []),
            ([0] * 20 + speech(30), rows(20), [(0, 20)]),
            ([0] * 70 + speech(60) + [0] * 5 + speech(10), rows(75), [(0, 70), (130, 135)])]


def test_logits_are_bit_identical(pair):
    kind, weights, reference, ours, _, _ = pair
    equal = []
    for ids, rows, ranges in _specs(kind, weights):
        a = reference._engines[0].input_logits(ids, rows, ranges)
        b = ours._engines[0].input_logits(ids, rows, ranges)
        assert a.shape == b.shape == (len(ids), weights.padded_vocab())
        assert np.isfinite(a).all() and np.abs(a).max() > 0
        equal.append(bool(np.array_equal(a, b)))
        assert equal[-1], f"logits differ at {int((a != b).any(axis=1).argmax())} of {len(ids)} positions"
    report(test="loader_logits", kind=kind, specs=len(equal), bit_identical=all(equal))


def test_a_changed_tensor_is_seen(pair, tmp_path):
    """The comparisons above can fail: one layer's k rows swapped in the weights the C++ loader is
    given changes that one tensor's bytes and the logits."""
    kind, weights, reference, _, _, gemm = pair
    layers = [dict(x) for x in weights.layers]
    k = layers[3]["self_attn.k_proj.weight"].copy()
    k[[0, 1]] = k[[1, 0]]
    layers[3]["self_attn.k_proj.weight"] = k
    wrong = _load(variant(weights, "k-swap", layers=layers), "cpp", gemm, first=False)
    try:
        want = _core._turbomind_weight_digest(reference._backends[0].model_comm)
        got = _core._turbomind_weight_digest(wrong._backends[0])
        assert [p for p in want if want[p] != got[p]] == ["text_model.layers.3.attention.w_qkv.weight"]
        ids, rows, ranges = _specs(kind, weights)[1]
        assert not np.array_equal(reference._engines[0].input_logits(ids, rows, ranges),
                                  wrong._engines[0].input_logits(ids, rows, ranges))
    finally:
        wrong.close()


GREEDY = dict(top_k=1, ras=False, max_len=48, min_len=48, seed=1)
SAMPLED = dict(seed=11, max_len=120)


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_cpp_and_python_loaded_engines_give_the_same_tokens(pair, options):
    kind, _, reference, ours, _, _ = pair
    text, ptext, pspeech = request(kind, seed=3)
    a = reference.generate(text, ptext, pspeech, **options)
    b = ours.generate(text, ptext, pspeech, **options)
    assert len(a) > 0 and a == b


@pytest.fixture(scope="module")
def bundle(pair, tmp_path_factory):
    kind, weights, *_ = pair
    out = tmp_path_factory.mktemp(f"bundle-{kind}") / "bundle"
    export_cpu_bundle(weights, out)
    return out


def _ids(values: list[int]) -> str:
    return ",".join(map(str, values))


def _host(bundle: Path, gemm: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"TM_GEMM_IMPORT": str(gemm)} if gemm else {}))
    # max_batch as the Python engines': the imported GEMM picks were measured for their shapes.
    return subprocess.run([str(host_program()), str(bundle), "--engine", "turbomind", "--max-batch", "64", *args],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_the_host_gives_the_python_tokens(pair, bundle, options):
    kind, _, reference, _, _, gemm = pair
    text, ptext, pspeech = request(kind, seed=5)
    flags = ["--seed", str(options["seed"]), "--max-len", str(options["max_len"])]
    if options is GREEDY:
        flags += ["--top-k", "1", "--no-ras", "--min-len", str(options["min_len"])]
    proc = _host(bundle, gemm, "--text", _ids(text), "--prompt-text", _ids(ptext), "--prompt-speech", _ids(pspeech),
                 *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The tokens are the last line: TurboMind prints the GEMM records it imports on stdout first.
    tokens = [int(t) for t in proc.stdout.strip().splitlines()[-1].split()]
    want = reference.generate(text, ptext, pspeech, **options)
    report(test="host_tokens", kind=kind, options=str(options), tokens=len(tokens), equal=tokens == want)
    assert len(tokens) > 0 and tokens == want


def test_64_threaded_host_requests_with_cancels_leave_nothing_live(pair, bundle):
    kind, *_ = pair
    proc = subprocess.run([str(load_program()), str(bundle), "--engine", "turbomind", "--threads", "64",
                           "--num-requests", "128", "--cancel-every", "4", "--cancel-after", "5", "--text-len", "20",
                           "--prompt-text-len", "16", "--prompt-speech-len", "100", "--max-len", "100"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report(test="host_load_64", kind=kind, **summary)
    assert summary["requests"] == 128 and summary["cancelled"] == 32
    assert summary["live_sessions_after"] == 0
    assert summary["tokens"] >= 96 * 100 + 32 * 5


def test_a_bad_bundle_and_a_missing_gpu_are_sentences(bundle, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights_file = next(broken.glob("*.safetensors"))
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    for target, extra, want in [(broken, [], "safetensors"), (bundle, ["--device", "64"], "GPU"),
                                (bundle, ["--gpu-memory", "1.5"], "cannot hold")]:
        proc = _host(target, None, "--text", "1,2,3", *extra)
        assert proc.returncode == 1, (extra, proc.returncode, proc.stderr[-500:])  # not a signal: no abort
        assert want in proc.stderr, proc.stderr[-500:]

