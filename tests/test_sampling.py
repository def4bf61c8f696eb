"""cosyfast's samplers (nucleus, random, RAS) against hand-worked cases and the Python reference.

Every test draws through ``cosyfast._core.sample_many`` and asserts on the support of the draws
(which ids can come out) or, statistically, on their distribution.
"""
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats

from cosyfast import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

NEG_INF = -math.inf


def log_probs(probs):
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def draw(method, scores, decoded=(), n=4000, seed=7, **opts):
    options = _core.SamplingOptions(**opts)
    out = _core.testing.sample_many(method, np.asarray(scores, dtype=np.float32), [int(t) for t in decoded], options, seed, n)
    out = np.asarray(out)
    assert out.shape == (n,)
    return out


def support(method, scores, decoded=(), n=4000, **opts):
    return set(np.unique(draw(method, scores, decoded, n=n, **opts)).tolist())


def ref_support(scores, top_p, top_k):
    ids, probs = ref.nucleus_support(scores, top_p, top_k)
    return set(ids.tolist())


# ----------------------------------------------------------------------------------------------
# The API's shape
# ----------------------------------------------------------------------------------------------

def test_sampling_options_defaults_and_attributes():
    o = _core.SamplingOptions()
    assert o.top_p == pytest.approx(0.8)
    assert o.top_k == 25
    assert o.ras is True
    assert o.win_size == 10
    assert o.tau_r == pytest.approx(0.1)
    assert o.exclude_repeated is True
    o.top_k = 3
    o.exclude_repeated = False
    o.top_p = 0.5
    assert (o.top_k, o.exclude_repeated, o.top_p) == (3, False, 0.5)


def test_sample_many_returns_int32_ids_and_is_seeded():
    scores = np.zeros(7, np.float32)
    a = draw("random", scores, n=500, seed=3)
    b = draw("random", scores, n=500, seed=3)
    c = draw("random", scores, n=500, seed=4)
    assert a.dtype == np.int32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 7


def test_sample_many_does_not_modify_scores():
    scores = log_probs([0.9, 0.04, 0.03, 0.02, 0.01])
    before = scores.copy()
    draw("ras", scores, decoded=[0], n=100)
    assert np.array_equal(scores, before)


# ----------------------------------------------------------------------------------------------
# Nucleus cut-offs, hand-worked
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "probs, top_p, top_k, kept",
    [
        # cum before the 3rd token is 0.81, not < 0.8: stop after 2
        ([0.5, 0.31, 0.14, 0.05], 0.8, 25, {0, 1}),
        # ... but < 0.82: the 3rd is taken, and then cum 0.95 stops it
        ([0.5, 0.31, 0.14, 0.05], 0.82, 25, {0, 1, 2}),
        # the rule is "mass BEFORE the token < top_p": 0.79 < 0.8 takes the 3rd although 0.95 > 0.8
        ([0.5, 0.29, 0.16, 0.05], 0.8, 25, {0, 1, 2}),
        # the most likely token is always kept
        ([0.5, 0.29, 0.16, 0.05], 0.1, 25, {0}),
        # top_p 1 keeps everything (up to top_k)
        ([0.5, 0.29, 0.16, 0.05], 1.0, 25, {0, 1, 2, 3}),
        # top_k caps the count
        ([0.3, 0.25, 0.2, 0.15, 0.1], 0.99, 2, {0, 1}),
        ([0.3, 0.25, 0.2, 0.15, 0.1], 0.99, 3, {0, 1, 2}),
        ([0.3, 0.25, 0.2, 0.15, 0.1], 0.5, 3, {0, 1}),
        # greedy
        ([0.3, 0.25, 0.2, 0.15, 0.1], 0.8, 1, {0}),
        # the sort is by probability, not by position
        ([0.05, 0.31, 0.14, 0.5], 0.8, 25, {3, 1}),
        ([0.1, 0.15, 0.2, 0.25, 0.3], 0.99, 2, {4, 3}),
    ],
)
def test_nucleus_cutoffs(probs, top_p, top_k, kept):
    scores = log_probs(probs)
    assert ref_support(scores, top_p, top_k) == kept
    assert support("nucleus", scores, top_p=top_p, top_k=top_k) == kept
    # with RAS on and nothing decoded, ras is plain nucleus
    assert support("ras", scores, top_p=top_p, top_k=top_k) == kept


def test_nucleus_probabilities_hand_worked():
    ids, probs = ref.nucleus_support(log_probs([0.5, 0.31, 0.14, 0.05]), 0.8, 25)
    assert ids.tolist() == [0, 1]
    assert probs == pytest.approx([0.5 / 0.81, 0.31 / 0.81], rel=1e-6)
    x = draw("nucleus", log_probs([0.5, 0.31, 0.14, 0.05]), n=20000, top_p=0.8, top_k=25)
    assert np.mean(x == 0) == pytest.approx(0.5 / 0.81, abs=0.015)


@pytest.mark.parametrize(
    "top_k, kept",
    [(1, {1}), (2, {1, 2}), (3, {1, 2, 3}), (4, {1, 2, 3, 4}), (5, {1, 2, 3, 4, 5})],
)
def test_ties_keep_the_lower_index_first(top_k, kept):
    scores = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.5], np.float32)
    assert ref_support(scores, 0.999, top_k) == kept
    assert support("nucleus", scores, top_p=0.999, top_k=top_k) == kept


def test_ties_with_top_p():
    # four tied tokens of 0.25 each (+ a tiny one): 0.5 < 0.6 takes a third, 0.75 stops
    scores = np.array([-20.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    assert ref_support(scores, 0.6, 25) == {1, 2, 3}
    assert support("nucleus", scores, top_p=0.6, top_k=25) == {1, 2, 3}


def test_neg_inf_is_never_drawn():
    scores = np.array([NEG_INF, 0.0, NEG_INF, 0.5, NEG_INF], np.float32)
    assert support("nucleus", scores, top_p=1.0, top_k=25) == {1, 3}
    assert support("random", scores) == {1, 3}
    assert support("ras", scores, top_p=1.0, top_k=25) == {1, 3}
    # a single finite score
    one = np.array([NEG_INF, NEG_INF, 2.0, NEG_INF], np.float32)
    assert support("nucleus", one, n=500) == {2}
    assert support("random", one, n=500) == {2}


def test_random_draws_from_the_full_softmax():
    scores = log_probs([0.9, 0.04, 0.03, 0.02, 0.01])
    assert support("random", scores, n=20000, top_p=0.1, top_k=1) == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------------------------
# The repetition rule, hand-worked: p = [0.9, 0.04, 0.03, 0.02, 0.01]; the nucleus keeps only 0
# ----------------------------------------------------------------------------------------------

DOMINANT = log_probs([0.9, 0.04, 0.03, 0.02, 0.01])


def test_no_history_no_redraw():
    assert ref_support(DOMINANT, 0.8, 25) == {0}
    assert support("ras", DOMINANT, decoded=[]) == {0}
    assert support("ras", DOMINANT, decoded=[1, 2, 3, 4]) == {0}


def test_repeat_once_in_window_triggers_redraw_excluding_it():
    got = support("ras", DOMINANT, decoded=[0], n=20000)
    assert got == {1, 2, 3, 4}
    assert 0 not in got
    dist = ref.ras_distribution(DOMINANT, [0], 0.8, 25, 10, 0.1, True)
    assert dist[0] == 0.0
    assert dist[1:] == pytest.approx(np.array([0.04, 0.03, 0.02, 0.01]) / 0.1, rel=1e-5)


def test_old_rule_redraws_from_the_full_distribution():
    got = support("ras", DOMINANT, decoded=[0], n=20000, exclude_repeated=False)
    assert got == {0, 1, 2, 3, 4}
    dist = ref.ras_distribution(DOMINANT, [0], 0.8, 25, 10, 0.1, False)
    assert dist == pytest.approx([0.9, 0.04, 0.03, 0.02, 0.01], rel=1e-5)
    x = draw("ras", DOMINANT, decoded=[0], n=20000, exclude_repeated=False)
    assert np.mean(x == 0) == pytest.approx(0.9, abs=0.01)


def test_redraw_is_not_checked_again():
    # 1 is in the window too, but the re-draw is a plain softmax draw: 1 can come out
    assert support("ras", DOMINANT, decoded=[1, 0], n=20000) == {1, 2, 3, 4}


def test_window_edge():
    # decoded[-10:] holds the 0: re-draw
    assert 0 not in support("ras", DOMINANT, decoded=[0] + [1] * 9, n=2000)
    # the 0 is 11th from the end: outside the window, no re-draw
    assert support("ras", DOMINANT, decoded=[0] + [1] * 10) == {0}
    assert support("ras", DOMINANT, decoded=[0, 0, 0] + [2] * 10) == {0}
    # a smaller window
    assert support("ras", DOMINANT, decoded=[0, 1, 1, 1], win_size=3) == {0}
    assert 0 not in support("ras", DOMINANT, decoded=[0, 1, 1], win_size=3, n=2000)
    for decoded, win in (([0] + [1] * 9, 10), ([0, 1, 1], 3)):
        assert ref.ras_distribution(DOMINANT, decoded, 0.8, 25, win, 0.1, True)[0] == 0.0
    assert ref.ras_distribution(DOMINANT, [0] + [1] * 10, 0.8, 25, 10, 0.1, True)[0] == 1.0


def test_threshold_win_size_times_tau_r():
    # tau_r 0.2: two occurrences in the window are needed
    assert support("ras", DOMINANT, decoded=[0, 3], tau_r=0.2) == {0}
    assert 0 not in support("ras", DOMINANT, decoded=[0, 3, 0], tau_r=0.2, n=2000)
    assert 0 not in support("ras", DOMINANT, decoded=[0, 0], tau_r=0.2, n=2000)


def test_ras_off_is_plain_nucleus():
    assert support("ras", DOMINANT, decoded=[0] * 10, ras=False) == {0}


def test_redraw_with_neg_inf_scores():
    # p(3) ~ 0.62, p(1) ~ 0.38: both in the nucleus; picking 3 (in the window) re-draws, and
    # with 3 excluded only 1 is finite
    scores = np.array([NEG_INF, 0.0, NEG_INF, 0.5, NEG_INF], np.float32)
    assert support("ras", scores, decoded=[3]) == {1}
    assert support("ras", scores, decoded=[3], exclude_repeated=False) == {1, 3}
    assert ref.ras_distribution(scores, [3], 0.8, 25, 10, 0.1, True).tolist() == [0, 1, 0, 0, 0]


# ----------------------------------------------------------------------------------------------
# Statistical agreement with the reference
# ----------------------------------------------------------------------------------------------

N = 20000


def _case_six():
    return log_probs([0.55, 0.2, 0.1, 0.08, 0.05, 0.02]), [4, 1, 0, 5]


def _case_fifty():
    rng = np.random.default_rng(2024)
    scores = (rng.normal(size=50) * 1.5).astype(np.float32)
    scores[17] = NEG_INF
    order = np.argsort(-scores, kind="stable")
    top = [int(t) for t in order[:4]]
    # the 1st and 3rd most likely are in the window, the 2nd only outside it
    decoded = [top[1], 9, 9, top[1], 11, top[0], 12, 13, 14, 15, 16, top[2], 18, 19]
    return scores, decoded


def _case_dominant():
    return log_probs([0.85, 0.06, 0.04, 0.03, 0.015, 0.005]), [2, 0, 3]


CASES = {"six": _case_six, "fifty": _case_fifty, "dominant": _case_dominant}


def ref_draws(scores, decoded, exclude, n=N, seed=12345, **kw):
    rng = np.random.default_rng(seed)
    opts = dict(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
    opts.update(kw)
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = ref.ras_sampling(scores, decoded, opts["top_p"], opts["top_k"], opts["win_size"],
                                  opts["tau_r"], exclude, rng)
    return out


def gof_pvalue(counts, probs, min_expected=5.0):
    """chi-square goodness of fit of counts against exact probabilities (low bins pooled)."""
    counts = np.asarray(counts, np.float64)
    probs = np.asarray(probs, np.float64)
    if np.any(counts[probs == 0] > 0):
        return 0.0  # drew a token of probability 0
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = list(counts[big])
    exp = list(expected[big])
    small = (~big) & (probs > 0)
    if small.any():
        obs.append(counts[small].sum())
        exp.append(expected[small].sum())
    exp = np.asarray(exp)
    exp *= n / exp.sum()
    if len(obs) < 2:
        return 1.0
    return stats.chisquare(np.asarray(obs), exp).pvalue


def contingency_pvalue(a_counts, b_counts, probs, min_expected=5.0):
    """chi2_contingency of two count vectors; bins expected < min_expected pooled."""
    a = np.asarray(a_counts, np.float64)
    b = np.asarray(b_counts, np.float64)
    big = probs * min(a.sum(), b.sum()) >= min_expected
    rows = [list(a[big]), list(b[big])]
    rest = ~big
    if rest.any() and (a[rest].sum() + b[rest].sum()) > 0:
        rows[0].append(a[rest].sum())
        rows[1].append(b[rest].sum())
    table = np.asarray(rows)
    table = table[:, table.sum(axis=0) > 0]
    return stats.chi2_contingency(table).pvalue


@pytest.fixture(scope="module")
def drawn():
    """cosyfast and reference draws for every case and rule (computed once)."""
    out = {}
    for name, make in CASES.items():
        scores, decoded = make()
        for exclude in (True, False):
            fast = draw("ras", scores, decoded, n=N, seed=99, exclude_repeated=exclude)
            slow = ref_draws(scores, decoded, exclude)
            k = len(scores)
            out[name, exclude] = (np.bincount(fast, minlength=k), np.bincount(slow, minlength=k))
    return out


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_ras_distribution_matches_reference(drawn, case, exclude):
    scores, decoded = CASES[case]()
    fast, slow = drawn[case, exclude]
    assert fast.sum() == N and slow.sum() == N
    exact = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, exclude)
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    # the reference sampler agrees with its own exact distribution (checks the reference)
    assert gof_pvalue(slow, exact) > 1e-3
    # cosyfast against the exact distribution and against the reference's draws
    assert gof_pvalue(fast, exact) > 1e-3
    assert contingency_pvalue(fast, slow, exact) > 1e-3
    # never a token of probability 0 (e.g. the -inf one, or the excluded repeated pick)
    assert np.all(fast[exact == 0] == 0)


@pytest.mark.parametrize("case", list(CASES))
def test_the_two_rules_differ_where_expected(case):
    scores, decoded = CASES[case]()
    a = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, True)
    b = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, False)
    assert np.abs(a - b).max() > 0.01


@pytest.mark.parametrize("case", ["dominant", "six"])
def test_statistical_test_has_power(drawn, case):
    """The counts of one rule are rejected against the exact distribution of the other."""
    scores, decoded = CASES[case]()
    exclude_exact = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, True)
    old_exact = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, False)
    fast_excl, _ = drawn[case, True]
    fast_old, _ = drawn[case, False]
    assert gof_pvalue(fast_excl, old_exact) < 1e-6
    assert gof_pvalue(fast_old, exclude_exact) < 1e-6
    assert contingency_pvalue(fast_excl, fast_old, old_exact) < 1e-6
    # and plain nucleus sampling is not RAS
    nucleus_exact = ref.nucleus_distribution(scores, 0.8, 25)
    assert gof_pvalue(fast_excl, nucleus_exact) < 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_nucleus_and_random_distributions(case):
    scores, _ = CASES[case]()
    k = len(scores)
    nuc = np.bincount(draw("nucleus", scores, n=N, seed=5), minlength=k)
    assert gof_pvalue(nuc, ref.nucleus_distribution(scores, 0.8, 25)) > 1e-3
    nuc3 = np.bincount(draw("nucleus", scores, n=N, seed=6, top_p=0.95, top_k=3), minlength=k)
    assert gof_pvalue(nuc3, ref.nucleus_distribution(scores, 0.95, 3)) > 1e-3
    rnd = np.bincount(draw("random", scores, n=N, seed=8), minlength=k)
    assert gof_pvalue(rnd, ref.random_distribution(scores)) > 1e-3
    # power: random draws are not nucleus draws
    assert gof_pvalue(rnd, ref.nucleus_distribution(scores, 0.8, 25)) < 1e-6


def test_ras_sample_many_matches_a_6564_wide_row():
    """A CosyVoice-sized row: a flat tail of 6500 small tokens plus a few large ones."""
    rng = np.random.default_rng(3)
    scores = (rng.normal(size=6564) * 0.3).astype(np.float32)
    scores[[10, 200, 3000]] = [6.0, 5.5, 5.0]
    scores[6561:] = NEG_INF
    decoded = [10, 3000, 5]
    for exclude in (True, False):
        exact = ref.ras_distribution(scores, decoded, 0.8, 25, 10, 0.1, exclude)
        counts = np.bincount(draw("ras", scores, decoded, n=N, seed=11, exclude_repeated=exclude), minlength=6564)
        assert gof_pvalue(counts, exact) > 1e-3
        assert counts[6561:].sum() == 0
