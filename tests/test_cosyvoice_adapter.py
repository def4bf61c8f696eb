"""cosyfast.cosyvoice against a stand-in of CosyVoice's own modules.

The stand-in has upstream's structure and attribute names (Qwen2LM / CosyVoice3LM with
llm_embedding, llm.model = a transformers Qwen2ForCausalLM, llm_decoder, speech_embedding,
sampling, stop_token_ids, ...; a CosyVoice2Model-like holder whose llm_job calls the LLM exactly
as upstream's does), loads the synthetic llm.pt with strict=True (so its state_dict has the real
key layout), and decodes greedily with its own loop, written from shared/COSYVOICE_LLM.md. The
patched object must give the same tokens. test_bistream.py reuses the stand-in.
"""
from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Generator, Iterator, Sequence

import numpy as np
import pytest
import torch

import cosyfast
from cosyfast.cosyvoice import CosyVoiceLLM, patch, sampling_options_from

transformers = pytest.importorskip("transformers")

EOP = 151646
GREEDY = {"top_k": 1, "ras": False}
SENSITIVE_SCALE = 10.0  # layer projections x10: attention (order, prompt) moves the greedy choice
KINDS = ("cosyvoice2", "cosyvoice3")


# ----------------------------------------------------------------------------------------------
# The stand-in: upstream's module structure, greedy decoding
# ----------------------------------------------------------------------------------------------

def ras_sampling(weighted_scores, decoded_tokens, sampling, top_p=0.8, top_k=25, win_size=10, tau_r=0.1):
    """Named as upstream's sampler, which hyperpyyaml wraps in a functools.partial. The patched
    LLM reads its options and must never call it."""
    raise AssertionError("the patched LLM called the torch sampler")


def nucleus_sampling(weighted_scores, top_p=0.8, top_k=25):
    raise AssertionError("the patched LLM called the torch sampler")


class Qwen2Encoder(torch.nn.Module):
    """Upstream's wrapper: `.model` is a Hugging Face Qwen2ForCausalLM."""

    def __init__(self, config) -> None:
        super().__init__()
        self.model = transformers.Qwen2ForCausalLM(config)


class Qwen2LM(torch.nn.Module):
    """CosyVoice2's LLM module: attribute names, shapes and ids as upstream's."""

    speech_rows = 6564
    decoder_bias = True

    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.llm_input_size = self.llm_output_size = hidden
        self.speech_token_size = 6561
        self.set_ids()
        if type(self) is Qwen2LM:
            self.llm_embedding = torch.nn.Embedding(2, hidden)
        self.llm = Qwen2Encoder(config)
        self.llm_decoder = torch.nn.Linear(hidden, self.speech_rows, bias=self.decoder_bias)
        self.speech_embedding = torch.nn.Embedding(self.speech_rows, hidden)
        self.sampling = functools.partial(ras_sampling, top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
        self.mix_ratio = [5, 15]

    def set_ids(self) -> None:
        self.sos, self.task_id = 0, 1
        self.eos_token, self.fill_token = 6561, 6563
        self.stop_token_ids = [6561, 6562, 6563]

    # The rows upstream builds its input from.
    def sos_row(self) -> torch.Tensor:
        return self.llm_embedding.weight[self.sos]

    def task_id_row(self) -> torch.Tensor:
        return self.llm_embedding.weight[self.task_id]

    def text_rows(self, ids: Sequence[int]) -> torch.Tensor:
        return self.llm.model.model.embed_tokens(torch.tensor(list(ids), dtype=torch.long))

    def speech_rows_of(self, ids: Sequence[int]) -> torch.Tensor:
        return self.speech_embedding(torch.tensor(list(ids), dtype=torch.long))

    @torch.no_grad()
    def logp(self, rows: torch.Tensor, cache):
        """Feeds rows [n, H] after the cache; returns (log_softmax(llm_decoder(h_last)), cache)."""
        out = self.llm.model.model(inputs_embeds=rows[None], past_key_values=cache, use_cache=True)
        return self.llm_decoder(out.last_hidden_state[0, -1]).log_softmax(-1).double(), out.past_key_values

    @torch.no_grad()
    def greedy_inference(self, text: Sequence[int], prompt_text: Sequence[int] = (),
                         prompt_speech: Sequence[int] = (), min_ratio: float = 2,
                         max_ratio: float = 20) -> list[int]:
        """COSYVOICE_LLM.md's loop: [sos, prompt text + text, task_id, prompt speech]; argmax with
        every stop id masked while fewer than min_len tokens are out; a stop id ends it."""
        rows = [self.sos_row()[None], self.text_rows(list(prompt_text) + list(text)), self.task_id_row()[None]]
        if len(prompt_speech):
            rows.append(self.speech_rows_of(prompt_speech))
        lm_input = torch.cat(rows)
        min_len, max_len = int(len(text) * min_ratio), int(len(text) * max_ratio)
        out: list[int] = []
        cache = None
        for i in range(max_len):
            logp, cache = self.logp(lm_input, cache)
            if i < min_len:
                logp[self.stop_token_ids] = -np.inf
            token = int(torch.argmax(logp))
            if token in self.stop_token_ids:
                break
            out.append(token)
            lm_input = self.speech_embedding.weight[token][None]
        return out


class CosyVoice3LM(Qwen2LM):
    """CosyVoice3's: no llm_embedding; sos/eos/task_id/fill are speech rows; no decoder bias."""

    speech_rows = 6761
    decoder_bias = False

    def set_ids(self) -> None:
        self.sos, self.eos_token, self.task_id, self.fill_token = 6561, 6562, 6563, 6564
        self.stop_token_ids = list(range(6561, 6761))

    def sos_row(self) -> torch.Tensor:
        return self.speech_embedding.weight[self.sos]

    def task_id_row(self) -> torch.Tensor:
        return self.speech_embedding.weight[self.task_id]


class CosyVoice2Model:
    """What CosyVoice's model holder does with its llm: llm_job's calls, argument for argument."""

    def __init__(self, llm) -> None:
        self.llm = llm

    def llm_job(self, text, prompt_text, llm_prompt_speech_token, llm_embedding, uuid) -> list[int]:
        if isinstance(text, Generator):
            tokens = self.llm.inference_bistream(
                text=text,
                prompt_text=prompt_text,
                prompt_text_len=torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
                prompt_speech_token=llm_prompt_speech_token,
                prompt_speech_token_len=torch.tensor([llm_prompt_speech_token.shape[1]], dtype=torch.int32),
                embedding=llm_embedding)
        else:
            tokens = self.llm.inference(
                text=text,
                text_len=torch.tensor([text.shape[1]], dtype=torch.int32),
                prompt_text=prompt_text,
                prompt_text_len=torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
                prompt_speech_token=llm_prompt_speech_token,
                prompt_speech_token_len=torch.tensor([llm_prompt_speech_token.shape[1]], dtype=torch.int32),
                embedding=llm_embedding,
                uuid=uuid)
        return [t for t in tokens]


class CosyVoice3Model(CosyVoice2Model):
    pass


def ids(values: Sequence[int]) -> torch.Tensor:
    """A [1, T] int32 tensor, as CosyVoice's frontend makes them."""
    return torch.tensor([list(values)], dtype=torch.int32)


def build_standin(model_dir, kind: str, scale: float = SENSITIVE_SCALE) -> Qwen2LM:
    """The stand-in module with the synthetic model's weights (strict load: same keys as llm.pt)."""
    import json

    with open(model_dir / "CosyVoice-BlankEN" / "config.json") as f:
        cfg = json.load(f)
    cfg.pop("torch_dtype", None)
    config = transformers.Qwen2Config(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    module = (Qwen2LM if kind == "cosyvoice2" else CosyVoice3LM)(config)
    state = torch.load(model_dir / "llm.pt", map_location="cpu", weights_only=True)
    state = {k: (v * scale if ".layers." in k and k.endswith("_proj.weight") else v) for k, v in state.items()}
    module.load_state_dict(state, strict=True)
    return module.float().eval()


@pytest.fixture(scope="module")
def model_dirs(tiny_cv2_dir, tiny_cv3_dir):
    return {"cosyvoice2": tiny_cv2_dir, "cosyvoice3": tiny_cv3_dir}


@pytest.fixture(scope="module")
def standins(model_dirs):
    return {kind: build_standin(model_dirs[kind], kind) for kind in KINDS}


@pytest.fixture(scope="module")
def patched(standins):
    """Per kind: (the CosyVoice2Model-like holder, patched with greedy options, the stand-in)."""
    out = {}
    for kind, module in standins.items():
        holder = (CosyVoice2Model if kind == "cosyvoice2" else CosyVoice3Model)(module)
        patch(holder, engine="cpu", sampling_options=GREEDY)
        out[kind] = holder
    yield out
    for holder in out.values():
        holder.llm.close()


CASES = {
    "cosyvoice2": [
        ([9906, 1879, 11, 1246, 374], [], []),
        ([1000, 2000, 30000, 151000], [40, 1079, 1661], [12, 500, 6560, 0, 4000]),
        ([42], [], [77, 77, 77, 3]),
    ],
    "cosyvoice3": [
        ([EOP, 9906, 1879, 11, 1246], [], []),
        ([1000, 2000, 30000], [2610, 525, 264, EOP, 300], [12, 500, 6560, 0, 4000]),
        ([5, 6, EOP], [], []),
    ],
}
PARAMS = [(kind, i) for kind in KINDS for i in range(len(CASES[kind]))]


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, case", PARAMS)
def test_patched_tokens_equal_the_standins_greedy_loop(patched, standins, kind, case):
    text, ptext, pspeech = CASES[kind][case]
    want = standins[kind].greedy_inference(text, ptext, pspeech)
    holder = patched[kind]
    got = holder.llm_job(ids(text), ids(ptext), ids(pspeech), torch.zeros(1, 192), "uuid-1")
    assert got == want
    assert all(isinstance(t, int) for t in got)
    assert int(len(text) * 2) <= len(got) <= int(len(text) * 20)


def test_the_greedy_loop_depends_on_the_prompt(standins):
    """Guards the comparison above: the stand-in's tokens move with prompt and order."""
    m = standins["cosyvoice2"]
    base = m.greedy_inference([1000, 2000, 30000], [], [], max_ratio=3)
    assert m.greedy_inference([30000, 2000, 1000], [], [], max_ratio=3) != base
    assert m.greedy_inference([1000, 2000, 30000], [40], [], max_ratio=3) != base
    assert m.greedy_inference([1000, 2000, 30000], [], [12], max_ratio=3) != base


@pytest.mark.parametrize("kind", KINDS)
def test_length_ratios_are_honoured(patched, standins, kind):
    text, ptext, pspeech = CASES[kind][0]
    llm = patched[kind].llm
    got = list(llm.inference(ids(text), torch.tensor([len(text)]), ids(ptext), torch.tensor([len(ptext)]),
                             ids(pspeech), torch.tensor([len(pspeech)]), torch.zeros(0, 192),
                             max_token_text_ratio=3, min_token_text_ratio=1))
    assert got == standins[kind].greedy_inference(text, ptext, pspeech, min_ratio=1, max_ratio=3)
    assert len(got) <= 3 * len(text)


def test_min_len_masks_every_cv3_stop_id(model_dirs):
    """Documented choice: under min_len every stop id is masked, CV3's eos 6562 included
    (upstream masks index 6561, which is CV3's sos). Here a stop id is the argmax at every step
    (6562 where hidden[0] > 0, 6565 elsewhere), so decoding must end exactly at min_len; masking
    only 6561, or only the eos, would end it at once."""
    module = build_standin(model_dirs["cosyvoice3"], "cosyvoice3")
    with torch.no_grad():
        for token, sign in ((6562, 1.0), (6565, -1.0)):
            module.llm_decoder.weight[token] = 0.0
            module.llm_decoder.weight[token, 0] = sign * 1e4
    holder = CosyVoice3Model(module)
    llm = patch(holder, engine="cpu", sampling_options=GREEDY)
    try:
        text = [EOP, 9906, 1879, 11, 1246]
        got = holder.llm_job(ids(text), ids([]), ids([]), torch.zeros(0, 192), "u")
        assert len(got) == 2 * len(text)
        assert got == module.greedy_inference(text)
    finally:
        llm.close()


# ----------------------------------------------------------------------------------------------
# patch() and the attributes servers read
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_upstream_attributes(patched, standins, kind):
    llm, module = patched[kind].llm, standins[kind]
    assert isinstance(llm, CosyVoiceLLM)
    for name in ("speech_token_size", "stop_token_ids", "eos_token", "fill_token", "sos", "task_id", "mix_ratio"):
        assert getattr(llm, name) == getattr(module, name), name
    assert llm.sampling is module.sampling
    assert llm.sampling_options == GREEDY
    assert not hasattr(llm, "vllm")  # CosyVoice's llm_job takes the vLLM path when it exists
    assert llm.to("cpu") is llm and llm.eval() is llm and llm.half() is llm
    with pytest.raises(RuntimeError, match="patch"):
        llm.load_state_dict({})


def test_sampling_options_follow_the_modules_sampler(standins):
    module = standins["cosyvoice2"]
    assert sampling_options_from(module.sampling) == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
    assert sampling_options_from(functools.partial(nucleus_sampling, top_p=0.7, top_k=5)) == {
        "top_p": 0.7, "top_k": 5, "ras": False}
    assert sampling_options_from(None) == {}
    with pytest.raises(ValueError, match="sampling_options"):
        sampling_options_from(functools.partial(lambda s, d, n: 0))
    with pytest.raises(ValueError, match="temperature"):
        sampling_options_from(functools.partial(ras_sampling, temperature=0.5))


def test_patch_reads_no_file_and_is_idempotent(model_dirs, monkeypatch):
    module = build_standin(model_dirs["cosyvoice2"], "cosyvoice2")

    def no_disk(*args, **kwargs):
        raise AssertionError("patch read a checkpoint from disk")

    monkeypatch.setattr(torch, "load", no_disk)
    monkeypatch.setattr(cosyfast.checkpoint, "load_checkpoint", no_disk)

    class CosyVoice2:  # the front object: patch() finds its .model
        def __init__(self, model):
            self.model = model

    front = CosyVoice2(CosyVoice2Model(module))
    llm = patch(front, engine="cpu")
    try:
        assert front.model.llm is llm
        assert patch(front.model, engine="cpu") is llm
        assert llm.sampling_options == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
        assert llm.model.kind == "cosyvoice2"
    finally:
        llm.close()


@pytest.mark.parametrize("kind", KINDS)
def test_weights_from_state_dict_equal_the_files(model_dirs, kind):
    """The module's state_dict gives the tables load_checkpoint reads from llm.pt; the cache key
    follows the tensors, not a file."""
    from cosyfast.checkpoint import load_checkpoint, weights_from_state_dict

    module = build_standin(model_dirs[kind], kind, scale=1.0)
    config = module.llm.model.config.to_dict()
    got = weights_from_state_dict(module.state_dict(), config)
    want = load_checkpoint(model_dirs[kind])
    assert got.kind == want.kind == kind
    assert got.vocab == want.vocab
    assert {k: got.config[k] for k in want.config} == want.config
    for name in ("text_embedding", "speech_embedding", "sos", "task_id", "decoder_weight", "norm"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert (got.decoder_bias is None) == (want.decoder_bias is None)
    for a, b in zip(got.layers, want.layers):
        assert all(np.array_equal(a[k], b[k]) for k in b)
    again = weights_from_state_dict({k: v.half() for k, v in module.state_dict().items()}, config)
    assert again.source_hash != got.source_hash  # other values, other export
    assert weights_from_state_dict(module.state_dict(), config).source_hash == got.source_hash
    state = module.state_dict()
    del state["speech_embedding.weight"]
    with pytest.raises(cosyfast.CheckpointError, match="speech_embedding"):
        weights_from_state_dict(state, config)


def test_patch_refuses_what_it_cannot_run(standins):
    with pytest.raises(TypeError, match="llm"):
        patch(object(), engine="cpu")

    class Holder:
        pass

    holder = Holder()
    holder.llm = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="Qwen2LM"):
        patch(holder, engine="cpu")
    holder.llm = standins["cosyvoice2"]
    holder.llm.vllm = object()
    try:
        with pytest.raises(ValueError, match="vLLM"):
            patch(holder, engine="cpu")
    finally:
        del holder.llm.vllm
    with pytest.raises(ValueError, match="top_k"):
        patch(holder, engine="cpu", sampling_options={"top_k": 0})


def test_seeded_sampling_is_reproducible(patched):
    llm = patched["cosyvoice2"].llm
    saved = (llm.sampling_options, llm.seed)
    llm.sampling_options, llm.seed = {}, 1234  # upstream RAS, one seed for every request
    try:
        args = (ids([1000, 2000, 30000]), torch.tensor([3]), ids([]), torch.tensor([0]), ids([]),
                torch.tensor([0]), torch.zeros(0, 192))
        a, b = list(llm.inference(*args)), list(llm.inference(*args))
        assert a == b and len(a) > 0
        llm.seed = 99
        assert list(llm.inference(*args)) != a
    finally:
        llm.sampling_options, llm.seed = saved


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

def test_bad_input_is_refused_at_the_call(patched):
    llm = patched["cosyvoice2"].llm
    empty = (ids([]), torch.tensor([0]), ids([]), torch.tensor([0]), torch.zeros(0, 192))
    with pytest.raises(ValueError, match="one request at a time"):
        llm.inference(torch.zeros(2, 3, dtype=torch.int32), torch.tensor([3]), *empty)
    with pytest.raises(ValueError, match="text_len"):
        llm.inference(ids([1, 2, 3]), torch.tensor([4]), *empty)
    with pytest.raises(ValueError, match="integer"):
        llm.inference(torch.ones(1, 3), torch.tensor([3]), *empty)
    with pytest.raises(ValueError, match="prompt_speech_token_len"):
        llm.inference(ids([1]), torch.tensor([1]), ids([]), torch.tensor([0]), ids([5]), torch.tensor([2]),
                      torch.zeros(0, 192))
    # found by the core when the request starts (the first next())
    with pytest.raises(ValueError, match="6561"):
        next(llm.inference(ids([1]), torch.tensor([1]), ids([]), torch.tensor([0]), ids([6561]),
                           torch.tensor([1]), torch.zeros(0, 192)))
    assert llm.live_sessions == 0


def test_empty_text_yields_nothing_as_upstream(patched):
    llm = patched["cosyvoice2"].llm
    assert list(llm.inference(ids([]), torch.tensor([0]), ids([40]), torch.tensor([1]), ids([5]), torch.tensor([1]),
                              torch.zeros(0, 192))) == []
    assert list(llm.inference(ids([1, 2]), torch.tensor([2]), ids([]), torch.tensor([0]), ids([]), torch.tensor([0]),
                              torch.zeros(0, 192), max_token_text_ratio=0.4)) == []  # int(2 * 0.4) = 0


def test_cv3_text_needs_endofprompt(patched):
    llm = patched["cosyvoice3"].llm
    gen = llm.inference(ids([1, 2]), torch.tensor([2]), ids([]), torch.tensor([0]), ids([]), torch.tensor([0]),
                        torch.zeros(0, 192))
    with pytest.raises(ValueError, match="151646"):
        next(gen)


# ----------------------------------------------------------------------------------------------
# Cancellation
# ----------------------------------------------------------------------------------------------

def _long(llm) -> Iterator[int]:
    """A request that cannot end by itself soon (ratio 2000 on 8 ids)."""
    text = [1000 + i for i in range(8)]
    return llm.inference(ids(text), torch.tensor([len(text)]), ids([]), torch.tensor([0]), ids([]),
                         torch.tensor([0]), torch.zeros(0, 192), max_token_text_ratio=2000,
                         min_token_text_ratio=2000)


def test_closing_the_generator_ends_the_session_at_once(patched):
    llm = patched["cosyvoice2"].llm
    gen = _long(llm)
    assert llm.live_sessions == 0  # nothing starts before the first next()
    first = [next(gen) for _ in range(3)]
    assert len(first) == 3
    assert llm.live_sessions == 1
    gen.close()
    assert llm.live_sessions == 0
    assert llm.model.engine_live_sessions == 0


def test_dropping_the_generator_ends_the_session(patched):
    llm = patched["cosyvoice2"].llm
    gen = _long(llm)
    next(gen)
    del gen
    gc.collect()
    assert llm.live_sessions == 0
    assert llm.model.engine_live_sessions == 0


def test_concurrent_requests_equal_solo_ones(patched, standins):
    """CosyVoice runs one llm_job thread per request; they step together in the core."""
    holder = patched["cosyvoice2"]
    requests = [([1000 + i, 2000, 30000 - i], [40] * (i % 3), [12, 500][: i % 3]) for i in range(6)]
    solo = [standins["cosyvoice2"].greedy_inference(*r, max_ratio=4) for r in requests]
    llm = holder.llm
    results: dict[int, list[int]] = {}

    def job(i: int) -> None:
        text, ptext, pspeech = requests[i]
        gen = llm.inference(ids(text), torch.tensor([len(text)]), ids(ptext), torch.tensor([len(ptext)]),
                            ids(pspeech), torch.tensor([len(pspeech)]), torch.zeros(0, 192),
                            max_token_text_ratio=4)
        results[i] = list(gen)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(requests))] == solo
    assert llm.live_sessions == 0
