"""One seed, one token stream: alone, under concurrency, streamed or not; cancel stops a stream."""
import threading
import time

import pytest

import cosyfast

KINDS = ("cosyvoice2", "cosyvoice3")
EOP = 151646
MAX_LEN = 60
# Cancel tests need a session that cannot end by itself before the cancel lands: the scheduler
# runs ahead of a slow consumer (no back-pressure), so give them a long max_len (and min_len).
SESSION_LIMIT = 16384
LONG = 16000
TEXT = {"cosyvoice2": [9906, 1879, 11, 1246, 374], "cosyvoice3": [EOP, 9906, 1879, 11, 1246]}
PROMPT_TEXT = [40, 1079, 1661]
PROMPT_SPEECH = [12, 500, 6560, 0, 4000, 4000]


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def model(tiny_dirs, kind):
    m = cosyfast.load(tiny_dirs[kind], engine="cpu", max_session_len=SESSION_LIMIT)
    yield m
    m.close()


def _request(kind, i):
    """The i-th of several different requests (prompts vary with i)."""
    text = TEXT[kind][: 2 + i % 4]
    if kind == "cosyvoice3" and EOP not in text:
        text = [EOP] + text
    ptext = PROMPT_TEXT[: i % 3]
    pspeech = PROMPT_SPEECH[: (i * 2) % 7]
    return text, ptext, pspeech


def _gen(model, kind, seed, i=0, **kw):
    text, ptext, pspeech = _request(kind, i)
    return model.generate(text, ptext, pspeech, seed=seed, max_len=MAX_LEN, **kw)


def _wait_idle(model, timeout=10.0):
    deadline = time.monotonic() + timeout
    while model.live_sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    return model.live_sessions


def test_same_seed_same_tokens(model, kind):
    a = _gen(model, kind, seed=1234)
    b = _gen(model, kind, seed=1234)
    assert len(a) > 0
    assert a == b
    # a seed of 64 bits
    big = 2**63 + 12345
    assert _gen(model, kind, seed=big) == _gen(model, kind, seed=big)


def test_different_seeds_different_tokens(model, kind):
    outs = [tuple(_gen(model, kind, seed=s, min_len=MAX_LEN)) for s in range(6)]
    assert all(len(o) == MAX_LEN for o in outs)
    assert len(set(outs)) == len(outs)


def test_stream_yields_the_same_tokens_as_generate(model, kind):
    text, ptext, pspeech = _request(kind, 1)
    for seed in (0, 7):
        want = model.generate(text, ptext, pspeech, seed=seed, max_len=MAX_LEN)
        s = model.stream(text, ptext, pspeech, seed=seed, max_len=MAX_LEN)
        got = [t for t in s]
        assert got == want
        assert s.finish_reason in ("stop_token", "max_len")
        assert (s.finish_reason == "max_len") == (len(got) == MAX_LEN)
    greedy = model.generate(text, ptext, pspeech, top_k=1, ras=False, max_len=MAX_LEN)
    assert list(model.stream(text, ptext, pspeech, top_k=1, ras=False, max_len=MAX_LEN)) == greedy


def test_same_seed_same_tokens_under_concurrency(model, kind):
    """The request under test gives the same tokens while 8 others run from other threads, some
    streamed, some generated; each of the others also gives its own solo result."""
    n_others = 8
    target = dict(seed=4242, i=0)
    solo_target = _gen(model, kind, **target)
    solo_others = [_gen(model, kind, seed=100 + j, i=j + 1) for j in range(n_others)]

    for round_ in range(2):
        results = [None] * n_others
        errors = []
        barrier = threading.Barrier(n_others + 1)

        def other(j):
            try:
                barrier.wait()
                text, ptext, pspeech = _request(kind, j + 1)
                if j % 2:
                    s = model.stream(text, ptext, pspeech, seed=100 + j, max_len=MAX_LEN)
                    out = []
                    for t in s:
                        out.append(t)
                        if len(out) % 7 == 0:
                            time.sleep(0.001)  # a slow consumer
                    results[j] = out
                else:
                    results[j] = model.generate(text, ptext, pspeech, seed=100 + j, max_len=MAX_LEN)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=other, args=(j,)) for j in range(n_others)]
        for t in threads:
            t.start()
        barrier.wait()
        if round_ == 0:
            got = _gen(model, kind, **target)
        else:
            text, ptext, pspeech = _request(kind, 0)
            got = list(model.stream(text, ptext, pspeech, seed=target["seed"], max_len=MAX_LEN))
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert got == solo_target
        assert results == solo_others
    assert _wait_idle(model) == 0


def test_live_sessions_and_cancel(model, kind):
    text, ptext, pspeech = _request(kind, 2)
    assert _wait_idle(model) == 0
    # min_len = max_len: no stop token can end it before the cancel
    s = model.stream(text, ptext, pspeech, seed=3, min_len=LONG, max_len=LONG)
    first = [next(s) for _ in range(5)]
    assert len(first) == 5
    assert model.live_sessions >= 1
    s.cancel()
    rest = list(s)  # tokens already produced stay readable, then the stream ends
    assert s.finish_reason == "cancelled"
    assert 5 + len(rest) < LONG
    assert _wait_idle(model) == 0
    # the tokens before the cancel are the seed's tokens
    full = model.generate(text, ptext, pspeech, seed=3, min_len=40, max_len=40)
    assert full[:5] == first


def test_cancel_before_reading(model, kind):
    text, ptext, pspeech = _request(kind, 3)
    s = model.stream(text, ptext, pspeech, seed=5, min_len=LONG, max_len=LONG)
    s.cancel()
    got = list(s)
    assert len(got) < LONG
    assert s.finish_reason == "cancelled"
    assert _wait_idle(model) == 0


def test_cancel_one_of_many(model, kind):
    """Cancelling one stream leaves the others' tokens unchanged."""
    solo = [_gen(model, kind, seed=50 + j, i=j) for j in range(3)]
    text, ptext, pspeech = _request(kind, 4)
    victim = model.stream(text, ptext, pspeech, seed=9, min_len=LONG, max_len=LONG)
    others = [model.stream(*_request(kind, j), seed=50 + j, max_len=MAX_LEN) for j in range(3)]
    next(victim)
    victim.cancel()
    assert [list(s) for s in others] == solo
    list(victim)
    assert victim.finish_reason == "cancelled"
    assert _wait_idle(model) == 0


def test_dropping_a_stream_ends_its_session(model, kind):
    import gc

    text, ptext, pspeech = _request(kind, 0)
    s = model.stream(text, ptext, pspeech, seed=1, min_len=LONG, max_len=LONG)
    next(s)
    del s
    gc.collect()
    assert _wait_idle(model) == 0


def test_close_and_context_manager(tiny_dirs):
    with cosyfast.load(tiny_dirs["cosyvoice2"], engine="cpu") as m:
        assert len(m.generate([1, 2], seed=0, min_len=5, max_len=5)) == 5
    with pytest.raises(RuntimeError, match="closed"):
        m.generate([1, 2], seed=0, max_len=5)


@pytest.mark.parametrize("lanes", [2, 3])
def test_lanes_change_no_tokens(tiny_dirs, kind, lanes):
    """Sessions spread over several scheduler lanes (each its own thread and rounds over the one
    engine) give the tokens they give on one lane, and every lane takes part."""
    requests = [(_request(kind, j), 300 + j) for j in range(12)]

    def run(n_lanes):
        with cosyfast.load(tiny_dirs[kind], engine="cpu", max_session_len=SESSION_LIMIT, lanes=n_lanes) as m:
            assert m.lanes == n_lanes
            streams = [m.stream(*r, seed=seed, min_len=MAX_LEN, max_len=MAX_LEN) for r, seed in requests]
            tokens = [s.drain() for s in streams]
            assert _wait_idle(m) == 0
            return tokens, m.stats["rounds"]

    expected, _ = run(1)
    got, rounds_many = run(lanes)
    assert got == expected
    assert all(len(t) == MAX_LEN for t in got)
    # Every lane that holds a session runs its own MAX_LEN rounds or more (more when sessions
    # join a lane's rounds one after another), so all lanes took part only if this holds.
    assert rounds_many >= lanes * MAX_LEN


def test_few_sessions_share_one_lane(tiny_dirs):
    """Lanes fill in order up to four sessions: three sessions on two lanes run as one lane's
    rounds (two lanes of one or two sessions would cost TurboMind twice the iterations)."""
    with cosyfast.load(tiny_dirs["cosyvoice2"], engine="cpu", max_session_len=SESSION_LIMIT, lanes=2) as m:
        streams = [m.stream(*_request("cosyvoice2", j), seed=j, min_len=MAX_LEN, max_len=MAX_LEN) for j in range(3)]
        assert all(len(s.drain()) == MAX_LEN for s in streams)
        assert _wait_idle(m) == 0
        rounds = m.stats["rounds"]
    # One lane: MAX_LEN rounds plus a few while the later sessions join; split over two lanes it
    # would be 2 * MAX_LEN or more.
    assert rounds < 2 * MAX_LEN


def test_lanes_out_of_range(tiny_dirs):
    for bad in (0, 17):
        with pytest.raises(ValueError, match="lanes must be in"):
            cosyfast.load(tiny_dirs["cosyvoice2"], engine="cpu", lanes=bad)


def test_sample_threads_change_no_tokens(tiny_dirs, kind):
    """A round's rows sampled on helper threads give the tokens sampled on the lane's own thread
    (each row belongs to its own session and RNG), stops included; rounds of 16+ rows do use the
    helpers, smaller ones do not."""
    requests = [(_request(kind, j), 500 + j) for j in range(24)]

    def run(threads):
        with cosyfast.load(tiny_dirs[kind], engine="cpu", max_session_len=SESSION_LIMIT, sample_threads=threads) as m:
            # Half the sessions may stop early (a stop token past min_len), so rounds shrink.
            streams = [m.stream(*r, seed=seed, min_len=MAX_LEN if seed % 2 else 0, max_len=MAX_LEN)
                       for r, seed in requests]
            tokens = [s.drain() for s in streams]
            reasons = [s.finish_reason for s in streams]
            assert _wait_idle(m) == 0
            return tokens, reasons, m.stats["parallel_rounds"]

    expected, expected_reasons, none = run(0)
    got, reasons, parallel = run(3)
    assert none == 0
    assert got == expected and reasons == expected_reasons
    # 12 sessions run MAX_LEN tokens and the others stop on their own (here after 2 to 60): rounds
    # hold 16+ rows while 4+ of those still run, about two thirds of them with these seeds.
    assert parallel >= MAX_LEN // 3


def test_sample_threads_out_of_range(tiny_dirs):
    for bad in (-1, 65):
        with pytest.raises(ValueError, match="sample_threads must be in"):
            cosyfast.load(tiny_dirs["cosyvoice2"], engine="cpu", sample_threads=bad)
