"""cosyfast (engine "cpu") against the Hugging Face re-implementation of CosyVoice's LLM loop.

Greedy decoding (top_k=1, ras=False) must give the reference's tokens exactly; sampled decoding
must respect the length rules and, on its first step, draw from the reference's distribution.
"""
import os
import shutil
import sys

import numpy as np
import pytest
from scipy import stats

import cosyfast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

KINDS = ("cosyvoice2", "cosyvoice3")
GREEDY = dict(top_k=1, ras=False)
EOP = ref.END_OF_PROMPT
SENSITIVE_SCALE = 10.0

# (text_ids, prompt_text_ids, prompt_speech_tokens); CV3 text needs <|endofprompt|> (151646)
# somewhere in prompt text + text, as upstream puts it at the end of the instruction/prompt text.
CASES = {
    "cosyvoice2": {
        "text_only": ([9906, 1879, 11, 1246, 374], [], []),
        "prompt_text_and_speech": ([1000, 2000, 30000, 151000], [40, 1079, 1661], [12, 500, 6560, 0, 4000]),
        "prompt_speech_only": ([151935, 0], [], [77, 77, 77, 3]),
        "one_text_id": ([42], [], []),
    },
    "cosyvoice3": {
        "text_only": ([EOP, 9906, 1879, 11, 1246], [], []),
        "prompt_text_and_speech": ([1000, 2000, 30000], [2610, 525, 264, EOP, 300], [12, 500, 6560, 0, 4000]),
        "prompt_speech_only": ([EOP, 151935, 0], [], [77, 77, 77, 3]),
        "eop_last": ([5, 6, EOP], [], []),
    },
}
PARAMS = [(k, c) for k in KINDS for c in CASES[k]]
VARIANTS = ("tiny", "sensitive")


def _key(kind, variant):
    return kind if variant == "tiny" else (kind, variant)


def _sensitive_copy(src, dst, scale=SENSITIVE_SCALE):
    """The tiny model with its layer projections scaled up, so attention (token order, prompt
    text, prompt speech) moves the greedy choice. The plain tiny model's embeddings dominate its
    0.02-std layers: reversing its text changes no greedy token, which would let a parity test
    miss a prompt-assembly bug."""
    import torch

    state = torch.load(os.path.join(src, "llm.pt"), map_location="cpu", weights_only=True)
    state = {k: (v * scale if ".layers." in k and k.endswith("_proj.weight") else v) for k, v in state.items()}
    os.makedirs(dst, exist_ok=True)
    torch.save(state, os.path.join(dst, "llm.pt"))
    shutil.copytree(os.path.join(src, "CosyVoice-BlankEN"), os.path.join(dst, "CosyVoice-BlankEN"), dirs_exist_ok=True)
    return dst


@pytest.fixture(scope="module")
def model_dirs(tiny_dirs, tmp_path_factory):
    dirs = {}
    for kind in KINDS:
        dirs[kind] = tiny_dirs[kind]
        dirs[kind, "sensitive"] = _sensitive_copy(dirs[kind], str(tmp_path_factory.mktemp(kind + "-sensitive")))
    return dirs


class _Lazy(dict):
    """Loads a model the first time a key is used (keys as in model_dirs)."""

    def __init__(self, make, dirs):
        super().__init__()
        self._make, self._dirs = make, dirs

    def __missing__(self, key):
        self[key] = value = self._make(self._dirs[key])
        return value


@pytest.fixture(scope="module")
def fast(model_dirs):
    models = _Lazy(lambda path: cosyfast.load(path, engine="cpu"), model_dirs)
    yield models
    for m in models.values():
        m.close()


@pytest.fixture(scope="module")
def slow(model_dirs):
    pytest.importorskip("transformers")
    return _Lazy(lambda path: ref.ReferenceLM(*ref.resolve_model_paths(path)), model_dirs)


def _lens(text):
    return int(len(text) * 2.0), int(len(text) * 20.0)


def test_reference_identifies_the_kind(slow):
    assert slow["cosyvoice2"].kind == "cosyvoice2"
    assert slow["cosyvoice3"].kind == "cosyvoice3"
    assert slow["cosyvoice2"].llm_decoder.bias is not None
    assert slow["cosyvoice3"].llm_decoder.bias is None


def test_fast_model_kind(fast):
    assert fast["cosyvoice2"].kind == "cosyvoice2"
    assert fast["cosyvoice3"].kind == "cosyvoice3"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind, case", PARAMS)
def test_greedy_matches_reference(fast, slow, kind, case, variant):
    text, ptext, pspeech = CASES[kind][case]
    key = _key(kind, variant)
    want = slow[key].inference(text, ptext, pspeech, ref.greedy_sampler)
    got = fast[key].generate(text, ptext, pspeech, seed=0, **GREEDY)
    assert list(got) == want
    min_len, max_len = _lens(text)
    assert min_len <= len(got) <= max_len
    assert all(0 <= t < ref.SPEECH_TOKEN_SIZE for t in got)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_accepts_numpy_and_torch_ids(fast, kind):
    import torch

    text, ptext, pspeech = CASES[kind]["prompt_text_and_speech"]
    want = fast[kind].generate(text, ptext, pspeech, **GREEDY)
    assert fast[kind].generate(np.array(text), np.array(ptext), np.array(pspeech, np.int32), **GREEDY) == want
    assert fast[kind].generate(torch.tensor([text]), torch.tensor([ptext]), torch.tensor([pspeech]), **GREEDY) == want


def test_prompt_text_is_not_counted_in_the_length_rules(fast, slow):
    """min/max_len come from the text without the prompt text (CV2's tiny model rarely stops)."""
    text, ptext, pspeech = [5, 6], list(range(100, 130)), []
    want = slow["cosyvoice2"].inference(text, ptext, pspeech, ref.greedy_sampler)
    got = fast["cosyvoice2"].generate(text, ptext, pspeech, **GREEDY)
    assert got == want
    if len(want) == 40:  # ran to max_len = 2 * 20 (not (30 + 2) * 20)
        s = fast["cosyvoice2"].stream(text, ptext, pspeech, **GREEDY)
        assert list(s) == want
        assert s.finish_reason == "max_len"
    assert len(got) <= 40


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_length_overrides_match_reference(fast, slow, kind):
    text, ptext, pspeech = CASES[kind]["text_only"]
    for min_len, max_len in ((0, 7), (3, 3), (0, 150), (50, 120)):
        want = slow[kind].inference(text, ptext, pspeech, ref.greedy_sampler, min_len=min_len, max_len=max_len)
        got = fast[kind].generate(text, ptext, pspeech, min_len=min_len, max_len=max_len, **GREEDY)
        assert got == want, (min_len, max_len)
        assert min(min_len, max_len) <= len(got) <= max_len


def _early_stop(slow_lm, kind, limit=150):
    """A CV3 text whose greedy decode meets a stop id early when min_len is 0."""
    candidates = [[EOP] + t for t in ([1], [2, 3], [9906, 1879], [500, 600, 700], [7] * 4, [151000], [88, 99])]
    best = None
    for text in candidates:
        tokens = slow_lm.inference(text, (), (), ref.greedy_sampler, min_len=0, max_len=limit)
        if len(tokens) < limit and (best is None or len(tokens) < len(best[1])):
            best = (text, tokens)
    return best


def test_min_len_forces_decoding_past_a_stop(fast, slow):
    kind = "cosyvoice3"  # 200 stop ids: the tiny random model meets one within a few dozen steps
    found = _early_stop(slow[kind], kind)
    assert found is not None, "no candidate text makes the reference stop early: the fixture model changed?"
    text, early = found
    stop_at = len(early)
    # min_len 0: both stop at the same step, on a stop token
    s = fast[kind].stream(text, min_len=0, max_len=150, **GREEDY)
    assert list(s) == early
    assert s.finish_reason == "stop_token"
    # min_len past that step: the stop ids are masked there, decoding continues
    forced = stop_at + 5
    want = slow[kind].inference(text, (), (), ref.greedy_sampler, min_len=forced, max_len=150)
    got = fast[kind].generate(text, min_len=forced, max_len=150, **GREEDY)
    assert got == want
    assert len(got) >= forced
    assert got[:stop_at] == early  # the same tokens up to the point where it stopped before


@pytest.mark.parametrize("kind, case", PARAMS)
def test_sampled_tokens_respect_length_rules(fast, kind, case):
    text, ptext, pspeech = CASES[kind][case]
    min_len, max_len = _lens(text)
    for seed in (1, 2, 3):
        s = fast[kind].stream(text, ptext, pspeech, seed=seed)
        got = list(s)
        assert min_len <= len(got) <= max_len
        assert all(0 <= t < ref.SPEECH_TOKEN_SIZE for t in got)
        assert s.finish_reason in ("stop_token", "max_len")
        assert (s.finish_reason == "max_len") == (len(got) == max_len)


@pytest.mark.parametrize("kind", KINDS)
def test_first_sampled_token_follows_the_reference_distribution(fast, slow, kind):
    """The first token over many seeds ~ nucleus(top_p 0.8, top_k 25) of the reference scores.

    Checks the whole path (prompt assembly, forward, decoder bias, min_len mask, sampler)."""
    text, ptext, pspeech = CASES[kind]["prompt_text_and_speech"]
    _, scores = slow[kind].inference(text, ptext, pspeech, ref.greedy_sampler, max_len=1, return_scores=True)
    exact = ref.ras_distribution(scores[0], [], 0.8, 25, 10, 0.1, True)
    n = 1500
    firsts = [fast[kind].generate(text, ptext, pspeech, seed=seed, max_len=1)[0] for seed in range(n)]
    counts = np.bincount(firsts, minlength=len(exact))
    assert counts[exact == 0].sum() == 0, "drew a token outside the reference nucleus"
    ids = np.flatnonzero(exact > 0)
    expected = exact[ids] * n
    big = expected >= 5
    obs = list(counts[ids][big]) + ([counts[ids][~big].sum()] if (~big).any() else [])
    exp = list(expected[big]) + ([expected[~big].sum()] if (~big).any() else [])
    assert len(obs) >= 2
    assert stats.chisquare(obs, np.asarray(exp) * n / np.sum(exp)).pvalue > 1e-3


def test_prompt_speech_is_not_in_the_ras_window(model_dirs):
    """With top_k=1 and RAS on, a re-draw happens only if the greedy token is in the window.

    The prompt holds every speech token and the window is wider than the prompt: if prompt
    tokens counted, the first token would always be re-drawn (and, excluded, differ from greedy)."""
    path = model_dirs["cosyvoice2"]
    prompt = list(range(ref.SPEECH_TOKEN_SIZE))
    text = [1, 2, 3]
    with cosyfast.load(path, engine="cpu", max_session_len=len(prompt) + 64) as m:
        greedy = m.generate(text, (), prompt, max_len=1, **GREEDY)
        assert len(greedy) == 1
        for seed in range(2):
            got = m.generate(text, (), prompt, max_len=1, seed=seed, top_k=1, ras=True, win_size=len(prompt) + 10)
            assert got == greedy


@pytest.mark.parametrize("variant", VARIANTS)
def test_ras_with_top_k_1_diverges_from_greedy_only_at_a_repeat(fast, variant):
    """top_k=1 + RAS equals greedy until the greedy token is already in the window; there it is
    re-drawn (and, under the current rule, is not that token)."""
    m = fast[_key("cosyvoice2", variant)]
    text, ptext, pspeech = CASES["cosyvoice2"]["prompt_text_and_speech"]
    win = 10
    fixed = dict(max_len=300, min_len=300)
    greedy = m.generate(text, ptext, pspeech, **fixed, **GREEDY)
    assert len(greedy) == 300
    first_repeat = next((i for i, t in enumerate(greedy) if t in greedy[max(0, i - win):i]), None)
    for seed in range(3):
        got = m.generate(text, ptext, pspeech, **fixed, seed=seed, top_k=1, ras=True, win_size=win)
        if first_repeat is None:
            assert got == greedy
        else:
            assert got[:first_repeat] == greedy[:first_repeat]
            assert got[first_repeat] != greedy[first_repeat]
    # a window of 1: RAS never lets a token follow itself (the re-draw excludes it)
    got = m.generate(text, ptext, pspeech, max_len=200, min_len=200, seed=0, top_k=1, ras=True, win_size=1)
    assert len(got) == 200
    assert all(a != b for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("kind", KINDS)
def test_parity_cases_have_power(slow, kind):
    """On the sensitive model the reference's greedy tokens change when the prompt is assembled
    wrongly, so the parity test above would catch such a bug in cosyfast."""
    lm = slow[kind, "sensitive"]
    text, ptext, pspeech = CASES[kind]["prompt_text_and_speech"]
    base = lm.inference(text, ptext, pspeech, ref.greedy_sampler)
    assert lm.inference(text[::-1], ptext, pspeech, ref.greedy_sampler) != base
    assert lm.inference(text, ptext[::-1], pspeech, ref.greedy_sampler) != base
    assert lm.inference(text, ptext, pspeech[::-1], ref.greedy_sampler) != base
    if kind == "cosyvoice2":  # runs to max_len, which counts the text without the prompt text
        assert lm.inference(ptext + text, (), pspeech, ref.greedy_sampler) != base
    if lm.llm_decoder.bias is not None:
        saved = lm.llm_decoder.bias.data.clone()
        lm.llm_decoder.bias.data.zero_()
        try:
            assert lm.inference(text, ptext, pspeech, ref.greedy_sampler) != base
        finally:
            lm.llm_decoder.bias.data.copy_(saved)
