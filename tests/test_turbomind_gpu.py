"""The TurboMind engine (built from lmdeploy's source with cosyfast's patch) on the GPU: parity with
HF transformers running CosyVoice's loop on the same weights (full-size synthetic CV2 and CV3,
bf16 engine against a float32 reference), RAS inside TurboMind's loop against the plain-Python
reference, min_len and stops, cancels, seeds, bistream. Skipped cleanly where there is no NVIDIA
GPU or cosyfast was built without the engine."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpu_skip import require_gpu_engine

torch = pytest.importorskip("torch")
require_gpu_engine()

import cosyfast
from cosyfast.bench.hf_reference import HfCosyVoice
from cosyfast.checkpoint import LlmWeights, load_checkpoint
from cosyfast.synthetic import ensure_default_model
from reference import ras_distribution

pytestmark = pytest.mark.gpu
REPORT = Path(os.environ.get("OUT", ".")) / "gpu_tests.jsonl"


def report(**row: object) -> None:
    with open(REPORT, "a") as f:
        f.write(json.dumps(row) + "\n")


def request(kind: str, seed: int = 0, text_len: int = 30):
    rng = np.random.default_rng(seed)
    prompt_text = rng.integers(0, 151643, 16).tolist()
    if kind == "cosyvoice3":
        prompt_text[-1] = 151646
    return rng.integers(0, 151643, text_len).tolist(), prompt_text, rng.integers(0, 6561, 100).tolist()


def variant(weights: LlmWeights, tag: str, **fields: object) -> LlmWeights:
    """The same checkpoint with some tables replaced, under its own export cache key (a hash of
    the original's and the tag: the cache keys on the hash's first characters)."""
    key = hashlib.sha256(f"{weights.source_hash}-{tag}".encode()).hexdigest()
    return dataclasses.replace(weights, source_hash=key, **fields)


@pytest.fixture(scope="module", params=["cosyvoice2", "cosyvoice3"])
def setup(request):
    kind = request.param
    model_dir = ensure_default_model(kind=kind, size="full")
    weights = load_checkpoint(model_dir)
    hf = HfCosyVoice(model_dir)
    model = cosyfast.load(weights, engine="turbomind", max_batch=128, cache_max_entry_count=0.2)
    yield kind, model_dir, weights, hf, model
    model.close()
    del hf
    torch.cuda.empty_cache()


def test_logits_and_greedy_match_hf(setup):
    kind, _, weights, hf, model = setup
    text, ptext, pspeech = request(kind)
    rows = hf.prompt(text, ptext, pspeech)
    # cosyfast greedy in TurboMind's loop: 48 tokens, RAS off, min_len = max_len so no stop is drawn
    ours = model.generate(text, ptext, pspeech, top_k=1, ras=False, max_len=48, min_len=48, seed=1)
    ref = hf.greedy(rows, 48)
    same_prefix = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), len(ref))
    # Teacher-forced logits along the reference tokens: one prefill of prompt rows + those tokens.
    engine = model._engines[0]
    p = rows.shape[0]
    logits = engine.input_logits([0] * p + ref[:31], rows.cpu().numpy().astype(np.float32), [(0, p)])
    bias = weights.decoder_bias if weights.decoder_bias is not None else 0.0
    n_rows = weights.vocab["decoder_rows"]
    got = [logits[p - 1 + k, :n_rows] + bias for k in range(32)]
    want = [w.cpu().numpy() for w in hf.teacher_forced(rows, ref[:31])]
    rels = [float(np.linalg.norm(g - w) / np.linalg.norm(w)) for g, w in zip(got, want)]
    noise = float(np.median([np.median(np.abs(g - w)) for g, w in zip(got, want)]))

    def near_tie(step: int, a: int, b: int) -> bool:
        """At this step the float32 reference itself cannot tell a from b at bf16 accuracy."""
        return abs(float(want[step][a] - want[step][b])) < 6 * noise

    mismatches = [k for k, (g, w) in enumerate(zip(got, want)) if int(g.argmax()) != int(w.argmax())]
    report(test="logits_greedy", kind=kind, median_rel_err=float(np.median(rels)), max_rel_err=float(np.max(rels)),
           median_abs_err=noise, teacher_forced_argmax_equal=f"{32 - len(mismatches)}/32",
           greedy_equal_prefix=same_prefix, ours=ours[:48], ref=ref[:48])
    # bf16 weights and activations through 24 layers against float32: ~2% relative; a wrong bias,
    # position or cache would give O(1).
    assert np.median(rels) < 5e-2, f"median logits rel err {np.median(rels):.4f} is beyond bf16 accuracy"
    for k in mismatches:
        assert near_tie(k, int(got[k].argmax()), int(want[k].argmax())), f"teacher-forced step {k} differs clearly"
    # Greedy in the loop (bias added in float32 there): the first 32 tokens match, unless the
    # streams part at such a near-tie.
    if same_prefix < 32:
        assert near_tie(same_prefix, ours[same_prefix], ref[same_prefix]), (
            f"greedy streams differ at token {same_prefix} where the reference is not ambiguous: "
            f"{ours[:same_prefix + 2]} vs {ref[:same_prefix + 2]}")


def test_fast_decode_switch_changes_the_gemms_not_the_model(setup):
    """fast_decode (default on) runs decode-sized GEMMs through cuBLASLt; off, TurboMind's own
    kernels run them (the counters show which ran). Both give the float32 reference's logits to
    bf16 accuracy, and each other's to within that."""
    from cosyfast import _core

    kind, _, weights, hf, model = setup
    text, ptext, pspeech = request(kind, seed=3)
    rows = hf.prompt(text, ptext, pspeech)
    ref = hf.greedy(rows, 16)
    want = [w.cpu().numpy() for w in hf.teacher_forced(rows, ref[:15])]
    p = rows.shape[0]
    bias = weights.decoder_bias if weights.decoder_bias is not None else 0.0
    n_rows = weights.vocab["decoder_rows"]
    shipped = cosyfast.load(weights, engine="turbomind", max_batch=8, cache_max_entry_count=0.05, fast_decode=False)
    try:
        results = {}
        for name, m in (("fast", model), ("shipped", shipped)):
            before = _core._turbomind_decode_gemm_counts()
            # a decode step (M = 1) and a prefill of p + 15 rows (> 128, still <= 256: taken too)
            m.generate(text, ptext, pspeech, top_k=1, ras=False, max_len=4, min_len=4, seed=1)
            logits = m._engines[0].input_logits([0] * p + ref[:15], rows.cpu().numpy().astype(np.float32),
                                                [(0, p)])
            after = _core._turbomind_decode_gemm_counts()
            got = [logits[p - 1 + k, :n_rows] + bias for k in range(16)]
            rel = float(np.median([np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in zip(got, want)]))
            results[name] = (after[0] - before[0], after[1] - before[1], rel, got)
    finally:
        shipped.close()
    fast_taken, _, fast_rel, fast_got = results["fast"]
    shipped_taken, shipped_left, shipped_rel, shipped_got = results["shipped"]
    between = float(np.median([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(fast_got, shipped_got)]))
    report(test="fast_decode_switch", kind=kind, fast_taken=fast_taken, shipped_taken=shipped_taken,
           shipped_left=shipped_left, fast_rel_err=fast_rel, shipped_rel_err=shipped_rel, fast_vs_shipped=between)
    layers = len(weights.layers)
    assert fast_taken >= 4 * layers, f"fast_decode ran only {fast_taken} GEMMs through the decode hook"
    assert shipped_taken == 0 and shipped_left == 0, "an engine loaded with fast_decode=False used the hook"
    assert fast_rel < 5e-2 and shipped_rel < 5e-2, (fast_rel, shipped_rel)
    assert between < 5e-2, f"fast and shipped GEMMs differ by {between:.4f} (median relative)"


LIVE = [5, 17, 300, 6000]          # the tokens the bias leaves drawable
LIVE_P = [0.5, 0.25, 0.15, 0.1]    # their probabilities: top_p 0.8 keeps the first three


def exact_sequence_distribution(scores: np.ndarray, steps: int, exclude: bool) -> dict[tuple[int, ...], float]:
    """P(every sequence of `steps` tokens) under reference RAS with the scores fixed (the logits
    are the bias alone), chained step by step from tests/reference.py's exact distribution."""
    out: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(steps):
        nxt: dict[tuple[int, ...], float] = {}
        for seq, p in out.items():
            dist = ras_distribution(scores, list(seq), 0.8, 25, 10, 0.1, exclude)
            for t in LIVE:
                if dist[t] > 0:
                    nxt[seq + (t,)] = nxt.get(seq + (t,), 0.0) + p * float(dist[t])
        out = nxt
    return out


def chi_square_p(counts: dict, probs: dict, n: int) -> float:
    """Pearson's chi-square p-value of observed counts against exact probabilities; an observed
    sequence of probability 0 gives p = 0."""
    from scipy.stats import chi2

    if any(probs.get(k, 0.0) == 0.0 for k in counts):
        return 0.0
    cells = [k for k in probs if probs[k] * n >= 5]
    rest_p = 1.0 - sum(probs[k] for k in cells)
    stat = sum((counts.get(k, 0) - n * probs[k]) ** 2 / (n * probs[k]) for k in cells)
    rest_obs = n - sum(counts.get(k, 0) for k in cells)
    dof = len(cells) - 1
    if rest_p * n >= 5:
        stat += (rest_obs - n * rest_p) ** 2 / (n * rest_p)
        dof += 1
    return float(chi2.sf(stat, dof))


def test_ras_distribution_in_the_loop_matches_reference_for_both_rules():
    """Decoder weight zero, so every step's scores are the bias alone over four live tokens: the
    distribution of 3-token sequences drawn in TurboMind's loop must match the plain-Python RAS
    of the rule asked for, and not the other rule's."""
    weights = load_checkpoint(ensure_default_model(kind="cosyvoice2", size="full"))
    rows = weights.vocab["decoder_rows"]
    bias = np.full(rows, -30.0, dtype=np.float32)
    bias[LIVE] = np.log(LIVE_P)
    ras = variant(weights, "ras-bias", decoder_weight=np.zeros_like(weights.decoder_weight), decoder_bias=bias)
    scores = bias.astype(np.float64)
    scores[weights.vocab["stop_ids"]] = -np.inf  # min_len = 3: stops masked at every step
    exact = {rule: exact_sequence_distribution(scores, 3, rule) for rule in (True, False)}
    n = 6000
    model = cosyfast.load(ras, engine="turbomind", max_batch=256, cache_max_entry_count=0.05)
    try:
        found = {}
        for rule in (True, False):
            streams = [model.stream([100 + i % 7], seed=10_000 * rule + i, min_len=3, max_len=3,
                                    exclude_repeated=rule) for i in range(n)]
            counts: dict[tuple[int, ...], int] = {}
            for s in streams:
                seq = tuple(s.drain())
                counts[seq] = counts.get(seq, 0) + 1
            found[rule] = counts
    finally:
        model.close()
    p = {(rule, against): chi_square_p(found[rule], exact[against], n) for rule in (True, False)
         for against in (True, False)}
    top = {rule: sorted(found[rule].items(), key=lambda kv: -kv[1])[:8] for rule in (True, False)}
    report(test="ras_distribution", n=n, p_values={f"{a}_vs_{b}": v for (a, b), v in p.items()},
           immediate_repeats={str(rule): sum(c for k, c in found[rule].items() if k[1] == k[0]) for rule in (True, False)},
           top={str(rule): [[list(k), c, round(n * exact[rule].get(k, 0.0), 1)] for k, c in top[rule]]
                for rule in (True, False)})
    assert p[(True, True)] > 1e-3 and p[(False, False)] > 1e-3, p
    assert p[(True, False)] < 1e-6 and p[(False, True)] < 1e-6, p


def test_min_len_and_stops_cv3():
    """CosyVoice3's 200 stop ids (more than TurboMind's 32-id lists hold): with a zero decoder
    every id is equally likely, so unmasked stops would end half the sessions before token 20.
    All must reach min_len, then end on a stop id (not emitted), within max_len."""
    weights = load_checkpoint(ensure_default_model(kind="cosyvoice3", size="full"))
    flat = variant(weights, "zero-decoder", decoder_weight=np.zeros_like(weights.decoder_weight))
    model = cosyfast.load(flat, engine="turbomind", max_batch=64, cache_max_entry_count=0.05)
    try:
        text, ptext, pspeech = request("cosyvoice3", seed=4, text_len=10)
        streams = [model.stream(text, ptext, pspeech, seed=i, min_len=20, max_len=600) for i in range(64)]
        tokens = [s.drain() for s in streams]
        reasons = [s.finish_reason for s in streams]
    finally:
        model.close()
    lengths = [len(t) for t in tokens]
    report(test="min_len_stops_cv3", lengths=lengths, reasons=sorted(set(reasons)))
    assert all(all(0 <= x < 6561 for x in t) for t in tokens)
    assert min(lengths) >= 20, f"a session ended before min_len: {sorted(lengths)[:5]}"
    assert all(r == "stop_token" for r in reasons), reasons
    # Stops are drawable from min_len on: ~3% a step, so some session stops within 10 tokens.
    assert min(lengths) < 30, f"no session stopped soon after min_len: {sorted(lengths)[:5]}"


def test_seed_gives_one_stream_alone(setup):
    kind, _, _, _, model = setup
    text, ptext, pspeech = request(kind, seed=11)
    a = model.generate(text, ptext, pspeech, seed=123, min_len=60, max_len=60)
    b = model.generate(text, ptext, pspeech, seed=123, min_len=60, max_len=60)
    c = model.generate(text, ptext, pspeech, seed=124, min_len=60, max_len=60)
    report(test="seed", kind=kind, equal=a == b, other_seed_differs=a != c)
    assert a == b and len(a) == 60
    assert a != c


def test_start_timing_counts_each_start_and_its_parts(setup):
    """_core._turbomind_start_timing (what start_cost.py splits a start by) counts every start once;
    the caller's part (the checks) is within the wall time of the calls, and the starter thread's
    parts (assembly, submission) happened."""
    from cosyfast import _core

    kind, _, _, _, model = setup
    text, ptext, pspeech = request(kind, seed=5)
    before = _core._turbomind_start_timing()
    t0 = time.perf_counter()
    streams = [model.stream(text, ptext, pspeech, seed=i, min_len=1, max_len=2) for i in range(8)]
    wall_ns = (time.perf_counter() - t0) * 1e9
    for s in streams:
        s.drain()
    # The starter counts a start once TurboMind has it, which a 2-token request may outrun.
    deadline = time.time() + 10
    while _core._turbomind_start_timing()["starts"] - before["starts"] < 8 and time.time() < deadline:
        time.sleep(0.001)
    after = _core._turbomind_start_timing()
    parts = {k: after[k] - before[k] for k in ("check_ns", "wait_ns", "assemble_ns", "submit_ns")}
    report(test="start_timing", kind=kind, starts=after["starts"] - before["starts"], wall_ns=wall_ns, **parts)
    assert after["starts"] - before["starts"] == 8
    assert 0 < parts["check_ns"] <= wall_ns
    assert parts["assemble_ns"] > 0 and parts["submit_ns"] > 0 and parts["wait_ns"] >= 0
    assert all(s.finish_reason in ("stop_token", "max_len") for s in streams)


def test_cancel_at_once_ends_every_queued_start_cancelled(setup):
    """Starts go to TurboMind from the starter thread: a stream cancelled right after Model.stream
    returns (most still queued) ends cancelled, never runs to max_len, and leaves nothing live."""
    kind, _, _, _, model = setup
    streams = [model.stream(*request(kind, seed=300 + i), seed=i, min_len=400, max_len=400) for i in range(48)]
    for s in streams:
        s.cancel()
    lengths = [len(s.drain()) for s in streams]
    reasons = [s.finish_reason for s in streams]
    report(test="cancel_at_once", kind=kind, reasons=sorted(set(reasons)), most_tokens=max(lengths))
    assert set(reasons) == {"cancelled"}, reasons
    assert max(lengths) < 400
    deadline = time.time() + 10
    while model.live_sessions and time.time() < deadline:
        time.sleep(0.01)
    assert model.live_sessions == 0


def test_finished_requests_are_freed(setup):
    """A finished request whose stream is dropped is freed, with TurboMind's request (its inputs and
    outputs): the request lets go of its observer at the end. Until session 14 the two held each
    other, a leak per request, and ~Engine waited 10 s for them in vain."""
    import gc

    from cosyfast import _core

    kind, _, _, _, model = setup
    gc.collect()
    before = _core._turbomind_requests_alive()
    streams = [model.stream(*request(kind, seed=400 + i), seed=i, min_len=5, max_len=5) for i in range(16)]
    during = _core._turbomind_requests_alive()
    for s in streams:
        s.drain()
    del streams, s
    gc.collect()
    deadline = time.time() + 10  # TurboMind lets go of a request's callback after its end
    while _core._turbomind_requests_alive() > before and time.time() < deadline:
        time.sleep(0.01)
    after = _core._turbomind_requests_alive()
    report(test="requests_freed", kind=kind, before=before, during=during, after=after)
    assert after <= before


def test_64_sessions_with_random_cancels_leave_nothing_live(setup):
    kind, _, _, _, model = setup
    rng = random.Random(5)
    streams = [model.stream(*request(kind, seed=200 + i), seed=i, min_len=200, max_len=200) for i in range(64)]
    cancel_after = {i: rng.randrange(0, 150) for i in rng.sample(range(64), 32)}
    got: dict[int, list[int]] = {}

    def read(i: int) -> None:
        out = []
        for t in streams[i]:
            out.append(t)
            if i in cancel_after and len(out) == cancel_after[i]:
                streams[i].cancel()
        got[i] = out

    threads = [threading.Thread(target=read, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    deadline = time.monotonic() + 5
    while model.engine_live_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = [s.finish_reason for s in streams]
    report(test="cancels", kind=kind, reasons={r: reasons.count(r) for r in set(reasons)},
           live=model.live_sessions, engine_live=model.engine_live_sessions)
    assert model.live_sessions == 0 and model.engine_live_sessions == 0
    for i, s in enumerate(streams):
        if i in cancel_after:
            assert s.finish_reason in ("cancelled", "max_len") and len(got[i]) >= cancel_after[i]
        else:
            assert s.finish_reason == "max_len" and len(got[i]) == 200


def test_concurrent_greedy_equals_solo_up_to_rounding(setup):
    """Each session among 64 computes what it computes alone: greedy streams are compared with
    solo runs. TurboMind's bf16 kernels round differently at other batch sizes, so a near-tie may
    flip late; a mix-up of sessions would part nearly every stream at once."""
    kind, _, _, _, model = setup
    reqs = [request(kind, seed=300 + i) for i in range(64)]
    opts = dict(top_k=1, ras=False, min_len=32, max_len=32)
    checked = list(range(0, 64, 8))
    solo = {i: model.generate(*reqs[i], seed=i, **opts) for i in checked}
    together = [s.drain() for s in [model.stream(*r, seed=i, **opts) for i, r in enumerate(reqs)]]
    parted = first_partings([together[i] for i in checked], [solo[i] for i in checked], 32)
    report(test="concurrent_greedy", kind=kind, first_divergence=parted)
    assert sum(p >= 4 for p in parted) >= 3, parted


def run_child(script: str, model_dir, reqs: list, opts: dict) -> dict:
    """A test's engines in a process of their own (a capture or a load that goes wrong may abort the
    process, which then fails that test alone): the script's last stdout line, as JSON."""
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", script, str(model_dir), json.dumps(reqs), json.dumps(opts)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def first_partings(got: list[list[int]], want: list[list[int]], length: int) -> list[int]:
    """Per stream, the first position where the two token lists differ (length: never)."""
    return [next((k for k, (x, y) in enumerate(zip(g, w)) if x != y), length) for g, w in zip(got, want)]


GRAPHS_CHILD = """
import json, sys
import cosyfast
from cosyfast import _core
from cosyfast.checkpoint import load_checkpoint
weights, reqs, opts = load_checkpoint(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for graphs in (False, True):
    with cosyfast.load(weights, engine="turbomind", max_batch=16, cache_max_entry_count=0.05, decode_graphs=graphs) as m:
        before = _core._turbomind_decode_graph_counts()
        out[str(graphs)] = [s.drain() for s in [m.stream(*r, seed=i, **opts) for i, r in enumerate(reqs)]]
        out["counts" + str(graphs)] = [a - b for a, b in zip(_core._turbomind_decode_graph_counts(), before)]
print(json.dumps(out))
"""


def test_decode_graphs_replay_decode_steps_and_keep_the_tokens(setup):
    """decode_graphs (the default, with fast_decode): the engine replays its decode steps'
    decoder layers from CUDA graphs (the counters show replays, no failed capture; none with
    graphs off), and 16 concurrent greedy streams follow the same model without graphs. The
    rounded k_max changes the attention's split count (its summation order), so a near-tie may
    flip late; a graph reading a wrong buffer would part the streams at once. In a process of its
    own: a capture that goes wrong may abort the process, which then fails this test alone."""
    kind, model_dir, _, _, _ = setup
    reqs = [request(kind, seed=500 + i) for i in range(16)]
    out = run_child(GRAPHS_CHILD, model_dir, reqs, dict(top_k=1, ras=False, min_len=48, max_len=48))
    got, want, (replayed, captured, eager, failed) = out["True"], out["False"], out["countsTrue"]
    parted = first_partings(got, want, 48)
    report(test="decode_graphs", kind=kind, replayed=replayed, captured=captured, eager=eager, failed=failed,
           first_divergence=parted)
    assert out["countsFalse"] == [0, 0, 0, 0], f"graphs ran with decode_graphs=False: {out['countsFalse']}"
    assert failed == 0 and captured >= 1, (replayed, captured, eager, failed)
    assert replayed >= 20, (replayed, captured, eager)  # 16 sessions x 48 tokens: most steps replay
    assert all(len(g) == 48 for g in got)
    assert sum(p >= 8 for p in parted) >= 12, parted


GATED_CHILD = """
import json, os, sys
import cosyfast
from cosyfast import _core
from cosyfast.checkpoint import load_checkpoint
weights, reqs, opts = load_checkpoint(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
os.environ["COSYFAST_GATED_GEMM_MAX_ROWS"] = "300"
try:
    cosyfast.load(weights, engine="turbomind", max_batch=16, cache_max_entry_count=0.05)
except ValueError as e:
    out["refused"] = str(e)
for limit in ("256", "0"):
    os.environ["COSYFAST_GATED_GEMM_MAX_ROWS"] = limit
    with cosyfast.load(weights, engine="turbomind", max_batch=16, cache_max_entry_count=0.05) as m:
        before = _core._turbomind_decode_gemm_counts()  # one stream: its steps do not depend on timing
        m.generate(*reqs[0], seed=0, **opts)
        out["counts" + limit] = [a - b for a, b in zip(_core._turbomind_decode_gemm_counts(), before)]
        out[limit] = [s.drain() for s in [m.stream(*r, seed=i, **opts) for i, r in enumerate(reqs)]]
print(json.dumps(out))
"""


def test_gate_up_row_limit_leaves_that_gemm_to_turbomind(setup):
    """COSYFAST_GATED_GEMM_MAX_ROWS (the measuring knob of cosyfast_decode_gemm.h): a value out of
    0..256 is refused at load naming the variable; at 0 the hook leaves every fused gate/up GEMM to
    TurboMind's kernel (under the decode graphs too) and still takes the others, and 16 concurrent
    greedy streams follow the default engine's. In a process of its own: the load that is refused
    and TurboMind's kernel inside a captured step must not take the module's other tests down."""
    kind, model_dir, weights, _, _ = setup
    reqs = [request(kind, seed=700 + i) for i in range(16)]
    out = run_child(GATED_CHILD, model_dir, reqs, dict(top_k=1, ras=False, min_len=48, max_len=48))
    (taken, left), (taken0, left0) = out["counts256"], out["counts0"]
    parted = first_partings(out["0"], out["256"], 48)
    report(test="gate_up_row_limit", kind=kind, refused=out.get("refused"), counts_default=[taken, left],
           counts_limit0=[taken0, left0], first_divergence=parted)
    assert out.get("refused") == "COSYFAST_GATED_GEMM_MAX_ROWS must be an integer from 0 to 256, got '300'"
    layers = len(weights.layers)
    # one stream's eager forwards (its prefill, a key's first decode step, its capture) count, replays
    # do not: each leaves its gate/up GEMM at limit 0 and runs the other three per layer through the hook
    assert left0 - left >= 2 * layers and taken0 >= 3 * (left0 - left), (taken, left, taken0, left0)
    assert all(len(g) == 48 for g in out["0"])
    assert sum(p >= 8 for p in parted) >= 12, parted


def run_bistream(model, text, ptext, pspeech, **options) -> tuple[list[int], str, int]:
    stream = model.bistream(ptext, pspeech, **options)
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    tokens, asked = [], 0
    while (event := stream.next_event()) is not None:
        if event == stream.NEED_TEXT:
            asked += 1
            stream.push_text(pieces.pop(0)) if pieces else stream.end_text()
        else:
            tokens.append(event)
    assert not pieces
    return tokens, stream.finish_reason, asked


def test_bistream_on_turbomind_follows_the_cpu_engine(setup):
    """CosyVoice2's bistream on TurboMind (one request per decode phase, each fed every row so
    far) against the same rules on the CPU engine (float32, rounds): greedy tokens agree across
    the 5:15 interleave and its fill tokens; sampled, it runs to a stop and leaves nothing live."""
    kind, model_dir, weights, _, model = setup
    if kind != "cosyvoice2":
        pytest.skip("bistream is CosyVoice2's")
    text, ptext, pspeech = request(kind, seed=9)
    greedy = dict(top_k=1, ras=False, max_len=60, seed=1)
    ours, reason, asked = run_bistream(model, text, ptext, pspeech, **greedy)
    cpu = cosyfast.load(weights, engine="cpu")
    try:
        ref, ref_reason, ref_asked = run_bistream(cpu, text, ptext, pspeech, **greedy)
    finally:
        cpu.close()
    same = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    sampled, sampled_reason, _ = run_bistream(model, text, ptext, pspeech, seed=3)
    report(test="bistream", kind=kind, greedy_equal_prefix=same, tokens=len(ours), ref_tokens=len(ref),
           reasons=[reason, ref_reason], asked=[asked, ref_asked], sampled_tokens=len(sampled),
           sampled_reason=sampled_reason)
    assert asked == ref_asked and asked >= 2
    assert same >= 16, f"TurboMind's bistream parts from the CPU engine's at token {same}: {ours[:20]} vs {ref[:20]}"
    assert sampled and all(0 <= t < 6561 for t in sampled) and sampled_reason in ("stop_token", "max_len")
    assert model.live_sessions == 0 and model.parked_sessions == 0
