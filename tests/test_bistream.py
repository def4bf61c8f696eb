"""Bistream (CosyVoice's inference_bistream) against a plain reference written from upstream's
Qwen2LM.inference_bistream, on the Hugging Face stand-in of test_cosyvoice_adapter, greedy.

The reference keeps upstream's variables (lm_input, text_cache, out_tokens, next_fill_index) and
control flow, with cosyfast's documented choices where upstream raises: in the text phase every
stop id but the fill token is masked; the tail ends at any stop id, and after
int(text ids * max_token_text_ratio) tokens in all.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pytest
import torch

import cosyfast
from cosyfast import _core
from cosyfast.cosyvoice import patch
from test_cosyvoice_adapter import EOP, GREEDY, CosyVoice2Model, CosyVoice3Model, build_standin, ids

MIX_TEXT, MIX_SPEECH = 5, 15


class Trace:
    """What the reference did: when it pulled each piece, and which fill tokens it drew."""

    def __init__(self) -> None:
        self.pulled_at: list[int] = []  # tokens emitted before each piece was pulled
        self.sampled_fills = 0
        self.forced_fills = 0
        self.tail_stop: int | None = None
        self.tail_text = 0  # text ids left for the tail


def reference_bistream(m, pieces: Iterable[Sequence[int]], prompt_text: Sequence[int] = (),
                       prompt_speech: Sequence[int] = (), max_ratio: float = 20,
                       trace: Trace | None = None) -> list[int]:
    trace = trace if trace is not None else Trace()
    fill = m.fill_token
    stops = list(m.stop_token_ids)
    text_phase_mask = [s for s in stops if s != fill]
    lm_input = m.sos_row()[None]
    prompt_text = list(prompt_text)
    if m.fill_token == 6564:  # CosyVoice3: the prompt up to <|endofprompt|> goes in first
        eop = prompt_text.index(EOP)
        lm_input = torch.cat([lm_input, m.text_rows(prompt_text[: eop + 1])])
        prompt_text = prompt_text[eop + 1:]
    text_cache = list(prompt_text)
    speech_cache = list(prompt_speech)
    next_fill_index = (len(speech_cache) // MIX_SPEECH + 1) * MIX_SPEECH - len(speech_cache)
    out: list[int] = []      # upstream's out_tokens: emitted tokens and fill tokens
    emitted: list[int] = []
    cache = None
    n_text = 0

    def forward(rows):
        nonlocal cache
        logp, cache = m.logp(rows, cache)
        return logp

    it = iter(pieces)
    while True:
        trace.pulled_at.append(len(emitted))
        piece = next(it, None)
        if piece is None:
            trace.pulled_at.pop()
            break
        text_cache += list(piece)
        n_text += len(piece)
        while len(speech_cache) != 0:
            if len(text_cache) >= MIX_TEXT:
                lm_input = torch.cat([lm_input, m.text_rows(text_cache[:MIX_TEXT]),
                                      m.speech_rows_of(speech_cache[:MIX_SPEECH])])
                text_cache, speech_cache = text_cache[MIX_TEXT:], speech_cache[MIX_SPEECH:]
            else:
                break
        if len(speech_cache) != 0:
            continue
        after_fill = len(out) != 0 and out[-1] == fill
        if after_fill or (len(out) == 0 and lm_input.shape[0] == 1):
            if len(text_cache) >= MIX_TEXT:
                rows = m.text_rows(text_cache[:MIX_TEXT])
                lm_input = rows if after_fill else torch.cat([lm_input, rows])
                text_cache = text_cache[MIX_TEXT:]
            else:
                continue
        while True:
            logp = forward(lm_input)
            if len(out) == next_fill_index:
                token = fill
                next_fill_index += MIX_SPEECH + 1
                trace.forced_fills += 1
            else:
                logp[text_phase_mask] = -np.inf
                token = int(torch.argmax(logp))
                trace.sampled_fills += token == fill
            if token == fill:
                next_fill_index = len(out) + MIX_SPEECH + 1
            out.append(token)
            if token >= m.speech_token_size:
                assert token == fill
                break
            emitted.append(token)
            lm_input = m.speech_embedding.weight[token][None]

    # The end of the text: lm_input as it stands (after a fill, rows already fed), the rest of the
    # text, task_id; then decode to a stop id.
    trace.tail_text = len(text_cache)
    lm_input = torch.cat([lm_input, m.text_rows(text_cache), m.task_id_row()[None]])
    max_len = int(n_text * max_ratio)
    while len(emitted) < max_len:
        logp = forward(lm_input)
        token = int(torch.argmax(logp))
        out.append(token)
        if token in stops:
            trace.tail_stop = token
            break
        emitted.append(token)
        lm_input = m.speech_embedding.weight[token][None]
    return emitted


def run_patched(llm, pieces: Sequence[Sequence[int]], prompt_text: Sequence[int] = (),
                prompt_speech: Sequence[int] = (), pulled_at: list[int] | None = None,
                **kwargs) -> list[int]:
    """The patched LLM's inference_bistream, recording how many tokens the consumer had when each
    piece was pulled."""
    got: list[int] = []

    def text():
        for piece in pieces:
            if pulled_at is not None:
                pulled_at.append(len(got))
            yield ids(piece)

    for token in llm.inference_bistream(text(), ids(prompt_text), torch.tensor([len(prompt_text)]),
                                        ids(prompt_speech), torch.tensor([len(prompt_speech)]),
                                        torch.zeros(0, 192), **kwargs):
        got.append(token)
    return got


def one_by_one(n: int, start: int = 1000) -> list[list[int]]:
    """What CosyVoice's frontend yields: one text id per piece."""
    return [[start + 37 * i % 5000] for i in range(n)]


# (pieces, prompt_text, prompt_speech)
CV2_CASES = {
    "one_id_per_piece": (one_by_one(23), [], []),
    "prompt_interleave": (one_by_one(17), [40, 1079, 1661, 9, 10, 11, 12], list(range(100, 120))),
    "prompt_speech_15": (one_by_one(12), [40, 1079, 1661], list(range(300, 315))),
    "uneven_pieces": ([[1, 2, 3], list(range(10, 22)), [], [40, 41], list(range(50, 63)), [7]], [], []),
    "short_text": ([[5], [6, 7]], [], []),
    "prompt_speech_dropped": (one_by_one(7), [], list(range(200, 240))),
    "prompt_text_only": (one_by_one(9), [40, 1079, 1661, 9, 10, 11], []),
}


@pytest.fixture(scope="module")
def model_dirs(tiny_cv2_dir, tiny_cv3_dir):
    return {"cosyvoice2": tiny_cv2_dir, "cosyvoice3": tiny_cv3_dir}


def _patched(model_dirs, kind, bias=None):
    module = build_standin(model_dirs[kind], kind)
    if bias:
        with torch.no_grad():
            for token, value in bias.items():
                if module.llm_decoder.bias is not None:
                    module.llm_decoder.bias[token] += value
                else:  # CV3 has no decoder bias: give the row a constant feature instead
                    raise ValueError("use a CosyVoice2 stand-in for biased tests")
    holder = (CosyVoice2Model if kind == "cosyvoice2" else CosyVoice3Model)(module)
    patch(holder, engine="cpu", sampling_options=GREEDY)
    return module, holder


@pytest.fixture(scope="module")
def cv2(model_dirs):
    module, holder = _patched(model_dirs, "cosyvoice2")
    yield module, holder
    holder.llm.close()


# Decoder biases that make the fill token and eos win at some steps, so that the reference meets
# sampled fills (which end a group early) and a stop in the tail.
FILL_EOS_BIAS = {6563: 9.0, 6561: 9.0}


@pytest.fixture(scope="module")
def cv2_biased(model_dirs):
    module, holder = _patched(model_dirs, "cosyvoice2", FILL_EOS_BIAS)
    yield module, holder
    holder.llm.close()


@pytest.fixture(scope="module")
def cv2_reference(cv2):
    """Each case's reference tokens and trace, computed once."""
    module, _ = cv2
    runs = {}
    for case, (pieces, ptext, pspeech) in CV2_CASES.items():
        trace = Trace()
        runs[case] = reference_bistream(module, pieces, ptext, pspeech, trace=trace), trace
    return runs


@pytest.mark.parametrize("case", sorted(CV2_CASES))
def test_bistream_equals_reference(cv2, cv2_reference, case):
    _, holder = cv2
    pieces, ptext, pspeech = CV2_CASES[case]
    want, trace = cv2_reference[case]
    pulled: list[int] = []
    got = run_patched(holder.llm, pieces, ptext, pspeech, pulled_at=pulled)
    assert got == want
    assert pulled == trace.pulled_at  # the text iterator is advanced exactly when upstream's is
    assert holder.llm.live_sessions == 0


def test_cases_cover_the_rules(cv2_reference):
    """The parity cases exercise forced fills, pieces that only wait, and an early tail."""
    traces = {case: trace for case, (_, trace) in cv2_reference.items()}
    assert sum(t.forced_fills for t in traces.values()) >= 5
    assert traces["short_text"].forced_fills == 0  # too little text to decode before the tail
    assert cv2_reference["short_text"][0]
    # uneven pieces (3, 12, 0, 2, 13, 1 ids): one 5-id group per piece once decoding starts, so
    # 31 ids make 5 groups and leave 6 for the tail
    assert traces["uneven_pieces"].forced_fills == 5
    assert traces["uneven_pieces"].tail_text == 6


@pytest.mark.parametrize("case", ["one_id_per_piece", "prompt_interleave", "uneven_pieces"])
def test_sampled_fill_and_tail_stop_equal_reference(cv2_biased, case):
    module, holder = cv2_biased
    pieces, ptext, pspeech = CV2_CASES[case]
    pieces = pieces + one_by_one(20, start=7000)  # longer: more chances for a drawn fill
    trace = Trace()
    want = reference_bistream(module, pieces, ptext, pspeech, trace=trace)
    assert trace.sampled_fills >= 1, "the bias no longer makes the fill token win: retune FILL_EOS_BIAS"
    assert trace.tail_stop is not None, "the bias no longer makes a stop id win in the tail"
    pulled: list[int] = []
    assert run_patched(holder.llm, pieces, ptext, pspeech, pulled_at=pulled) == want
    assert pulled == trace.pulled_at


def test_through_upstreams_llm_job(cv2):
    """CosyVoice's llm_job takes the bistream path when the text is a generator."""
    module, holder = cv2
    pieces, ptext, pspeech = CV2_CASES["prompt_interleave"]
    want = reference_bistream(module, pieces, ptext, pspeech)
    text = (torch.tensor([p], dtype=torch.int32) for p in pieces)
    assert holder.llm_job(text, ids(ptext), ids(pspeech), torch.zeros(0, 192), "u") == want


def test_empty_text_iterator(cv2):
    module, holder = cv2
    assert run_patched(holder.llm, [], [40, 41], []) == reference_bistream(module, [], [40, 41], []) == []


def test_max_token_text_ratio_caps_the_tail(cv2):
    module, holder = cv2
    pieces = one_by_one(6)
    want = reference_bistream(module, pieces, max_ratio=4)
    got = run_patched(holder.llm, pieces, max_token_text_ratio=4)
    assert got == want
    assert len(got) == 24  # the random CV2 model never draws eos: it runs to the cap


def test_cv3_bistream_equals_reference(model_dirs):
    module, holder = _patched(model_dirs, "cosyvoice3")
    try:
        for pieces, ptext, pspeech in ((one_by_one(14), [2610, 525, EOP, 300], []),
                                       (one_by_one(11), [7, EOP, 8, 9, 10, 11, 12], list(range(100, 118)))):
            trace = Trace()
            want = reference_bistream(module, pieces, ptext, pspeech, trace=trace)
            pulled: list[int] = []
            assert run_patched(holder.llm, pieces, ptext, pspeech, pulled_at=pulled) == want
            assert pulled == trace.pulled_at
        with pytest.raises(ValueError, match="151646"):
            run_patched(holder.llm, one_by_one(3), [1, 2], [])
    finally:
        holder.llm.close()


# ----------------------------------------------------------------------------------------------
# Streams, errors, cancellation
# ----------------------------------------------------------------------------------------------

def test_text_iterator_errors_propagate_and_end_the_session(cv2):
    _, holder = cv2
    llm = holder.llm

    def text():
        yield ids([1])
        yield ids(list(range(10, 20)))
        raise KeyError("the text source broke")

    with pytest.raises(KeyError, match="text source"):
        for _ in llm.inference_bistream(text(), ids([]), torch.tensor([0]), ids([]), torch.tensor([0]),
                                        torch.zeros(0, 192)):
            pass
    assert llm.live_sessions == 0
    assert llm.model.engine_live_sessions == 0

    with pytest.raises(ValueError, match="200000"):
        run_patched(llm, [[1, 2], [200000]])
    assert llm.live_sessions == 0


def test_cancel_while_waiting_for_text(cv2):
    """A session parked for text keeps its engine cache; cancelling it frees both at once."""
    _, holder = cv2
    model = holder.llm.model
    s = model.bistream([], [], seed=0, **GREEDY)
    assert s.is_bistream
    assert s.next_event(5) == _core.Stream.NEED_TEXT
    s.push_text(list(range(10, 20)))
    tokens = []
    while (event := s.next_event(5)) != _core.Stream.NEED_TEXT:
        tokens.append(event)
    assert len(tokens) == MIX_SPEECH  # one group, then the forced fill asks for text
    assert model.parked_sessions == 1 and model.engine_live_sessions == 1
    s.cancel()
    assert s.wait(5)
    assert s.finish_reason == "cancelled"
    assert (model.live_sessions, model.parked_sessions, model.engine_live_sessions) == (0, 0, 0)


def test_stream_api_misuse(cv2):
    _, holder = cv2
    model = holder.llm.model
    s = model.bistream([], [], seed=0, **GREEDY)
    with pytest.raises(RuntimeError, match="NextEvent"):
        next(s)  # a plain read meets the request for text
    s.end_text()
    with pytest.raises(RuntimeError, match="ended"):
        s.push_text([1])
    s.cancel()
    assert s.wait(5)
    plain = model.stream([1, 2], seed=0, max_len=2)
    with pytest.raises(RuntimeError, match="bistream"):
        plain.push_text([1])
    assert plain.drain() and not plain.is_bistream
    with pytest.raises(ValueError, match="6561"):
        model.bistream([], [6561])
    with pytest.raises(ValueError, match="text_group"):
        model.bistream([], [], mix_ratio=(0, 15))


# ----------------------------------------------------------------------------------------------
# The engine's append
# ----------------------------------------------------------------------------------------------

def test_cpu_engine_append_equals_one_longer_prefill(model_dirs):
    weights = cosyfast.load_checkpoint(model_dirs["cosyvoice2"])
    engine = _core.CpuQwen2Engine(weights.config, weights.speech_embedding, weights.decoder_weight,
                                  weights.layers, weights.norm, max_session_len=64)
    assert engine.supports_append
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((12, weights.config["hidden_size"])).astype(np.float32)
    speech7 = weights.speech_embedding[7:8]
    whole = engine.forward([(1, rows, None)])[0]
    with_step = engine.forward([(2, np.concatenate([rows[:5], speech7, rows[5:]]), None)])[0]
    engine.forward([(3, rows[:5], None), (4, rows[:5], None)])
    engine.forward([(4, None, 7)])
    # appends in one round with another session's prefill
    out = engine.forward([(3, rows[5:], None, True), (4, rows[5:], None, True), (5, rows[:3], None)])
    np.testing.assert_array_equal(out[0], whole)  # the same positions, bit for bit
    np.testing.assert_array_equal(out[1], with_step)
    assert not np.array_equal(whole, with_step)
    assert engine.live_sessions == 5
    with pytest.raises(RuntimeError, match="not live"):
        engine.forward([(99, rows[:2], None, True)])
    with pytest.raises(RuntimeError, match="max_session_len"):
        engine.forward([(1, np.concatenate([rows] * 5), None, True)])
    for sid in range(1, 6):
        engine.end_session(sid)
    assert engine.live_sessions == 0


def test_seeded_bistream_is_the_same_alone_and_together(cv2):
    """RAS with a seed: parking and resuming among other sessions changes no draw."""
    import threading

    _, holder = cv2
    model = holder.llm.model
    requests = [(one_by_one(9 + 3 * i, start=100 * i), [40 + i], list(range(i * 4))) for i in range(5)]

    def run(i: int) -> list[int]:
        pieces, ptext, pspeech = requests[i]
        s = model.bistream(ptext, pspeech, seed=1000 + i)
        it, tokens = iter(pieces), []
        while (event := s.next_event(30)) is not None:
            if event != _core.Stream.NEED_TEXT:
                tokens.append(event)
            elif (piece := next(it, None)) is None:
                s.end_text()
            else:
                s.push_text(piece)
        return tokens

    alone = [run(i) for i in range(len(requests))]
    together: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(i))) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [together.get(i) for i in range(len(requests))] == alone
    assert all(alone) and len({tuple(a) for a in alone}) == len(alone)
