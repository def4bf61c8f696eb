"""cosyfast.cosyvoice.patch() inside upstream CosyVoice's own pipeline on the GPU: upstream's
CosyVoice2Model / CosyVoice3Model, LLM, flow and HiFT classes built from its yaml configs
(benchmarks/e2e/upstream.py, from the pack benchmarks/e2e/make_pack.sh makes), the LLM patched to
run on TurboMind.

- Greedy, the patched model's llm_job (upstream's code, CUDA tensors) yields the tokens cosyfast's
  own `generate` gives for the same inputs, and the tokens of upstream's own float32 torch loop,
  except where bf16 parts the streams at a near-tie that the float32 logits show.
- Bistream: llm_job with a text generator runs through the patched inference_bistream; greedy, its
  tokens equal `Model.bistream`'s fed the same pieces; tts() turns them into audio.
- tts() streaming from 4 threads: every request yields 960 samples per token (24 kHz, 25
  tokens/s); offline, tts() hands the flow the tokens llm_job yields, and where those agree with
  upstream's, the audio equals upstream's.

Skipped without a CUDA GPU or the TurboMind engine, and without the upstream source
(COSYFAST_E2E_PACK, default .e2epack/). COSYFAST_E2E_CPU=1 runs the same tests on the CPU engine
with the tiny LLM (the CPU dry run of this module). The LLM is full size on the GPU (TurboMind's
kernels need real head sizes); the flow and HiFT are small either way (the tests check the LLM's
place in the pipeline, not the vocoder's speed).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_skip import require_gpu_engine

torch = pytest.importorskip("torch")
ON_CPU = os.environ.get("COSYFAST_E2E_CPU") == "1"
if not ON_CPU:
    require_gpu_engine(no_gpu_hint=" (COSYFAST_E2E_CPU=1 runs these tests on the CPU engine)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "e2e"))
import upstream  # noqa: E402

if not (upstream.pack_dir() / "src" / "cosyvoice").is_dir():
    pytest.skip(f"no upstream CosyVoice source in {upstream.pack_dir()} (benchmarks/e2e/make_pack.sh makes it)",
                allow_module_level=True)

try:
    upstream.activate(upstream.pack_dir())  # upstream's pinned transformers first
except RuntimeError as e:  # transformers 5 already imported by an earlier module of this session
    pytest.skip(f"{e} (run this module in a process of its own)", allow_module_level=True)

import cosyfast.cosyvoice  # noqa: E402

pytestmark = pytest.mark.gpu
ENGINE = "cpu" if ON_CPU else "turbomind"
SIZE = "tiny" if ON_CPU else "full"
GREEDY = {"top_k": 1, "ras": False}
TOKENS = 60                  # 3 text ids: min_len 6, max_len 60
SAMPLES_PER_TOKEN = 960      # 24000 Hz / 25 tokens per second
REPORT = Path(os.environ.get("OUT", ".")) / "e2e_tests.jsonl"
KINDS = ("cosyvoice2", "cosyvoice3")


def report(**row: object) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(json.dumps(row) + "\n")


def llm_job_tokens(model: Any, request: upstream.Request, text: Any = None) -> list[int]:
    """Upstream's llm_job, called as tts() calls it (in a thread of its own, on its dicts)."""
    uid = str(uuidlib.uuid1())
    with model.lock:
        model.tts_speech_token_dict[uid], model.llm_end_dict[uid] = [], False
    thread = threading.Thread(target=model.llm_job, args=(request.text if text is None else text, request.prompt_text,
                                                          request.speech_token, request.embedding, uid))
    thread.start()
    thread.join(300)
    assert not thread.is_alive(), "llm_job still ran after 300 s"
    assert model.llm_end_dict.pop(uid) is True
    return list(model.tts_speech_token_dict.pop(uid))


@torch.inference_mode()
def teacher_forced_logits(llm: Any, request: upstream.Request, tokens: list[int], dtype: torch.dtype) -> np.ndarray:
    """Upstream's module, one forward over its own prompt rows (as Qwen2LM.inference builds them)
    and `tokens`: the decoder's logits before each token and after the last, in float64."""
    device = next(llm.parameters()).device
    embed = llm.llm.model.model.embed_tokens
    ids = torch.cat([request.prompt_text, request.text], 1).to(device, torch.long)
    table = llm.speech_embedding.weight if kind_of(llm) == "cosyvoice3" else llm.llm_embedding.weight
    rows = torch.cat([table[llm.sos][None], embed(ids)[0], table[llm.task_id][None],
                      llm.speech_embedding(request.speech_token.to(device, torch.long))[0],
                      llm.speech_embedding.weight[torch.tensor(tokens, dtype=torch.long, device=device)]])
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        hidden = llm.llm.model.model(inputs_embeds=rows[None]).last_hidden_state[0]
        logits = llm.llm_decoder(hidden[-len(tokens) - 1:])
    return logits.double().cpu().numpy()


def kind_of(llm: Any) -> str:
    return "cosyvoice3" if type(llm).__name__ == "CosyVoice3LM" else "cosyvoice2"


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


class Setup:
    """One upstream model per kind: the float32 torch LLM's greedy tokens and logits first, then
    the same model patched (greedy) with cosyfast."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.built = upstream.build(kind, size=SIZE, small_flow=True, fp16=False)
        self.model = self.built.model
        self.requests = [upstream.make_request(kind, TOKENS, seed=s) for s in (11, 12)]
        self.torch_llm = self.model.llm
        upstream.greedy_sampling(self.torch_llm)
        self.upstream_tokens = [llm_job_tokens(self.model, r) for r in self.requests]
        self.upstream_audio = [self.offline_audio(r) for r in self.requests]
        self.fast = cosyfast.cosyvoice.patch(self.model, ENGINE, sampling_options=GREEDY, max_batch=16)
        # upstream's tts() grows the streaming hop on the model, for every later request; per
        # thread, each request's chunks are the same whatever the other threads did
        self.hop = upstream.PerRequestHop(self.model)

    def offline_audio(self, request: upstream.Request, handed: list[list[int]] | None = None) -> torch.Tensor:
        """tts(stream=False)'s audio, HiFT's source noise (torch's global RNG, which upstream's
        LLM sampler also draws from) seeded just before token2wav; `handed` gets the tokens tts()
        passed to token2wav, per call."""
        token2wav = self.model.token2wav

        def seeded(*args: Any, **kwargs: Any) -> Any:
            if handed is not None:
                handed.append([int(t) for t in kwargs["token"].flatten()])
            torch.manual_seed(0)
            return token2wav(*args, **kwargs)

        self.model.token2wav = seeded
        try:
            return torch.cat([out["tts_speech"] for out in self.model.tts(**request.tts_kwargs(), stream=False)], 1)
        finally:
            del self.model.token2wav  # back to the class's method

    def close(self) -> None:
        self.fast.close()


@pytest.fixture(scope="module", params=KINDS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    s = Setup(request.param)
    yield s
    s.close()
    del s
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def test_pack_is_upstream_at_a_pinned_commit() -> None:
    commits = upstream.upstream_commits(upstream.pack_dir())
    assert set(commits) == {"FunAudioLLM/CosyVoice", "shivammehta25/Matcha-TTS"}
    assert all(len(c) == 40 for c in commits.values())


def test_setup_is_upstreams_own_classes(setup: Setup) -> None:
    import cosyvoice.cli.model as holders

    want = {"cosyvoice2": ("CosyVoice2Model", "CausalMaskedDiffWithXvec", "HiFTGenerator"),
            "cosyvoice3": ("CosyVoice3Model", "CausalMaskedDiffWithDiT", "CausalHiFTGenerator")}[setup.kind]
    assert isinstance(setup.model, getattr(holders, want[0]))  # (PerRequestHop's subclass of it)
    assert (type(setup.model.flow).__name__, type(setup.model.hift).__name__) == want[1:]
    assert type(setup.model.flow).__module__.startswith("cosyvoice.flow.")
    assert isinstance(setup.model.llm, cosyfast.cosyvoice.CosyVoiceLLM)
    assert setup.model.llm.model.engine == ENGINE
    assert all(len(t) == TOKENS for t in setup.upstream_tokens), [len(t) for t in setup.upstream_tokens]


def near_tie_report(setup: Setup, request: upstream.Request, ours: list[int], ref: list[int]) -> dict[str, Any]:
    """Where `ours` parts from the float32 reference: the reference's logit gap between the two
    tokens at that step against the bf16 noise (median |bf16 - fp32| of the logits up to it)."""
    k = first_difference(ours, ref)
    if k is None:
        return {"first_difference": None}
    prefix = ref[:k]
    fp32 = teacher_forced_logits(setup.torch_llm, request, prefix, torch.float32)
    bf16 = teacher_forced_logits(setup.torch_llm, request, prefix, torch.bfloat16)
    noise = float(np.median(np.abs(bf16 - fp32)))
    step = fp32[k]
    gap = float(step[ref[k]] - step[ours[k]]) if k < min(len(ours), len(ref)) else float("inf")
    # |gap|: a reference loop that clearly disagrees with its own model's logits is no tie either
    return {"first_difference": k, "fp32_gap": gap, "bf16_noise": noise, "near_tie": abs(gap) < 6 * noise}


@pytest.mark.parametrize("index", [0, 1])
def test_patched_llm_job_greedy_matches_generate_and_upstream(setup: Setup, index: int) -> None:
    request = setup.requests[index]
    got = llm_job_tokens(setup.model, request)
    want = setup.fast.model.generate(request.text, request.prompt_text, request.speech_token, **GREEDY)
    ref = setup.upstream_tokens[index]
    vs_generate = near_tie_report(setup, request, got, want) if got != want else {"first_difference": None}
    vs_upstream = near_tie_report(setup, request, got, ref)
    report(test="e2e_llm_job_greedy", kind=setup.kind, engine=ENGINE, request=index, tokens=len(got),
           vs_generate=vs_generate, vs_upstream_fp32=vs_upstream, ours=got[:24], upstream=ref[:24])
    assert len(got) == len(want) == TOKENS
    # the same engine and inputs: identical, or parted only at a near-tie of the fp32 logits
    assert got == want or vs_generate["near_tie"], vs_generate
    # against upstream's own float32 torch loop: the same up to a near-tie
    assert vs_upstream["first_difference"] is None or vs_upstream["near_tie"], vs_upstream
    if ON_CPU:  # float32 both: no rounding to hide behind
        assert got == ref


def test_offline_tts_hands_the_flow_llm_jobs_tokens_and_equal_tokens_give_upstreams_audio(setup: Setup) -> None:
    """tts(stream=False) hands token2wav exactly the tokens the patched llm_job yields, in order
    (on any engine: greedy repeats itself). The flow's noise is fixed (CausalConditionalCFM's
    rand_noise), so where those tokens are upstream's own the audio is upstream's too; bf16 parts
    the GPU's tokens from upstream's float32 ones early (the near-ties above), so on the GPU that
    second comparison may find no request to compare."""
    compared = 0
    for request, ref_tokens, ref_audio in zip(setup.requests, setup.upstream_tokens, setup.upstream_audio):
        ours = llm_job_tokens(setup.model, request)
        handed: list[list[int]] = []
        audio = setup.offline_audio(request, handed)
        assert handed == [ours], (first_difference(handed[0], ours) if len(handed) == 1 else len(handed))
        assert audio.shape == ref_audio.shape == (1, TOKENS * SAMPLES_PER_TOKEN)
        if ours == ref_tokens:
            compared += 1
            torch.testing.assert_close(audio, ref_audio, rtol=1e-3, atol=1e-3)
    report(test="e2e_offline_audio", kind=setup.kind, engine=ENGINE, handed_equal=len(setup.requests),
           audio_compared=compared)
    if ON_CPU:
        assert compared == len(setup.requests)


def test_streaming_tts_from_threads(setup: Setup) -> None:
    """tts(stream=True) from 4 threads at once: each yields two chunks (25 + 3 lookahead tokens,
    then the rest), TOKENS x 960 samples in all; the engine holds no session afterwards."""
    results: list[tuple[int, int] | BaseException] = []

    def one(i: int) -> None:
        try:
            request = setup.requests[i % 2]
            setup.hop.reset()
            chunks = [out["tts_speech"] for out in setup.model.tts(**request.tts_kwargs(), stream=True)]
            results.append((len(chunks), sum(int(c.shape[1]) for c in chunks)))
        except BaseException as e:  # noqa: BLE001 - asserted below
            results.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    report(test="e2e_streaming_threads", kind=setup.kind, engine=ENGINE, results=[str(r) for r in results])
    assert len(results) == 4 and not any(isinstance(r, BaseException) for r in results), results
    for chunks, samples in results:  # type: ignore[misc]
        assert chunks == 2
        assert samples == TOKENS * SAMPLES_PER_TOKEN
    assert setup.fast.live_sessions == 0


def text_pieces(request: upstream.Request) -> Iterator[torch.Tensor]:
    """The text as CosyVoice's frontend yields it for bistream: [1, 1] int32 tensors."""
    ids = torch.cat([request.text, request.text, request.text], 1)  # 9 ids: groups of 5 and a tail
    for i in range(ids.shape[1]):
        yield ids[:, i:i + 1]


def test_bistream_through_patched_llm_job(setup: Setup) -> None:
    request = setup.requests[0]
    got = llm_job_tokens(setup.model, request, text=text_pieces(request))
    stream = setup.fast.model.bistream(request.prompt_text, request.speech_token, **GREEDY)
    pieces, want = text_pieces(request), []
    while (event := stream.next_event()) is not None:
        if event == stream.NEED_TEXT:
            piece = next(pieces, None)
            stream.push_text(piece.flatten().tolist()) if piece is not None else stream.end_text()
        else:
            want.append(event)
    uid_free = setup.fast.live_sessions == 0
    report(test="e2e_bistream", kind=setup.kind, engine=ENGINE, tokens=len(got), equal=got == want,
           first_difference=first_difference(got, want), finish_reason=stream.finish_reason)
    assert got, "bistream yielded no token"
    assert all(0 <= t < upstream.SPEECH_TOKEN_SIZE for t in got)
    assert got == want
    assert uid_free
    # and through tts(): the generator's text becomes audio, 960 samples per token
    chunks = [out["tts_speech"] for out in setup.model.tts(**{**request.tts_kwargs(), "text": text_pieces(request)},
                                                           stream=True)]
    assert sum(int(c.shape[1]) for c in chunks) == len(got) * SAMPLES_PER_TOKEN
    assert setup.fast.live_sessions == 0
