"""The replica pool (csrc/decode/pool.h): the one pick of the replica for each request, which the
Python Model and the C API both use."""
import pytest

import cosyfast
from cosyfast import _core


def test_requests_spread_to_the_least_loaded_replica_and_tokens_do_not_depend_on_it(tiny_cv2_dir):
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as one:
        expected = [one.generate([5, 6, 7], seed=s, max_len=30) for s in range(4)]
    with cosyfast.load(tiny_cv2_dir, engine="cpu", replicas=3) as model:
        pool = model._pool
        assert len(pool.replicas) == 3
        # Long requests that stay live: each new one goes to an idle replica, ties to the first.
        streams = []
        for i in range(3):
            assert pool.pick() is pool.replicas[i]
            streams.append(model.stream([1, 2, 3], seed=i, min_len=3000, max_len=3000))
        assert [r.live_sessions for r in pool.replicas] == [1, 1, 1] and pool.live_sessions == 3
        for s in streams:
            s.cancel()
            s.wait(30)
        assert pool.live_sessions == 0
        got = [model.generate([5, 6, 7], seed=s, max_len=30) for s in range(4)]
    assert got == expected


def test_a_pool_needs_replicas():
    with pytest.raises(ValueError, match="at least one replica"):
        _core.GeneratorPool([])
