"""The CPU-testable parts of the TurboMind setup: what is refused and why, the factory swap while
lmdeploy's converter loads a model, and the module check (tests/test_turbomind_gpu.py runs the
engine itself)."""
import sys
import types

import pytest

from cosyfast import _core, turbomind


class _FakeTurboMind:
    """Stands for _turbomind.TurboMind: `create` is a static factory, as in the binding."""

    @staticmethod
    def create(model_dir, engine_config):
        return "lmdeploy's"


def test_a_build_without_the_engine_says_how_to_get_it():
    if turbomind.built():
        pytest.skip("this build has the TurboMind engine")
    with pytest.raises(ImportError, match="COSYFAST_TURBOMIND=ON"):
        turbomind.check_turbomind()


def test_models_are_created_by_cosyfast_while_loading_and_by_lmdeploy_after(monkeypatch):
    monkeypatch.setattr(_core, "_create_turbomind", lambda model_dir, engine_config: "cosyfast's", raising=False)
    module = types.SimpleNamespace(TurboMind=_FakeTurboMind)
    original = _FakeTurboMind.__dict__["create"]
    with turbomind._created_by_cosyfast(module):
        assert _FakeTurboMind.create(model_dir="", engine_config=None) == "cosyfast's"
    assert _FakeTurboMind.__dict__["create"] is original
    with pytest.raises(RuntimeError):
        with turbomind._created_by_cosyfast(module):
            raise RuntimeError("load failed")
    assert _FakeTurboMind.create("", None) == "lmdeploy's"


@pytest.fixture
def as_if_built(monkeypatch):
    monkeypatch.setattr(turbomind, "built", lambda: True)
    monkeypatch.setattr(turbomind, "_bound_modules", lambda: {})


@pytest.mark.parametrize("version", ["0.14.0", "0.15.0", "0.17.0"])
def test_other_lmdeploy_versions_are_refused(monkeypatch, as_if_built, version):
    monkeypatch.setitem(sys.modules, "lmdeploy", types.SimpleNamespace(__version__=version))
    with pytest.raises(ImportError, match=f"built from lmdeploy {turbomind.LMDEPLOY_VERSION}.*found lmdeploy {version}"):
        turbomind.check_turbomind(needs_lmdeploy=True)


def test_the_pinned_lmdeploy_is_accepted(monkeypatch, as_if_built):
    fake = types.SimpleNamespace(__version__=turbomind.LMDEPLOY_VERSION)
    monkeypatch.setitem(sys.modules, "lmdeploy", fake)
    assert turbomind.check_turbomind(needs_lmdeploy=True) is fake


def test_the_cpp_loader_needs_no_lmdeploy(monkeypatch, as_if_built):
    monkeypatch.setitem(sys.modules, "lmdeploy", None)  # importing it would fail
    assert turbomind.check_turbomind() is None


@pytest.mark.parametrize(("options", "match"), [
    (dict(loader="python"), "loader must be one of"),
    (dict(loader="cpp", async_=0), "TurbomindEngineConfig fields, read only with loader='lmdeploy'"),
    (dict(fast_decode=2), "fast_decode must be True or False, got 2"),
    (dict(decode_graphs="yes"), "decode_graphs must be True or False, got 'yes'"),
    (dict(decode_graphs=True, fast_decode=False), "decode_graphs needs fast_decode"),
    # fast_decode off alone is fine: decode_graphs follows it by default (the loader check comes next)
    (dict(fast_decode=False, loader="python"), "loader must be one of"),
])
def test_loader_options_are_checked_first(options, match):
    with pytest.raises(ValueError, match=match):
        turbomind.make_turbomind_engine(None, **options)


def test_another_turbomind_module_imported_first_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "_turbomind", types.SimpleNamespace(__file__="/elsewhere/_turbomind.so"))
    with pytest.raises(ImportError, match="another _turbomind module"):
        turbomind._bound_modules()


@pytest.mark.parametrize("share", [0.0, 1.0, 2.5])
def test_the_cache_share_must_be_a_fraction(monkeypatch, share):
    monkeypatch.setattr(turbomind, "check_turbomind", lambda **_: None)
    with pytest.raises(ValueError, match="cache_max_entry_count must be in \\(0, 1\\)"):
        turbomind.make_turbomind_engine(None, cache_max_entry_count=share)


@pytest.fixture(scope="module")
def tiny_weights(tiny_cv2_dir):
    from cosyfast.checkpoint import load_checkpoint

    return load_checkpoint(tiny_cv2_dir)


def kv_bytes_per_position(weights) -> int:
    c = weights.config  # K and V of every layer and KV head, bf16
    return c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * c["head_dim"] * 2


def test_the_default_budget_is_what_the_sessions_need(tiny_weights):
    plan = turbomind.plan_gpu_memory(tiny_weights, max_batch=256, max_session_len=4096, total_bytes=80 << 30)
    assert plan.kv_bytes == 256 * 4096 * kv_bytes_per_position(tiny_weights)
    assert plan.cache_bytes == plan.kv_bytes  # no more cache than the sessions can use
    assert plan.budget_bytes == plan.weights_bytes + plan.kv_bytes + plan.workspace_bytes
    # A session length that is not a whole number of TurboMind's 64-position blocks rounds up.
    odd = turbomind.plan_gpu_memory(tiny_weights, max_batch=1, max_session_len=65, total_bytes=80 << 30)
    assert odd.kv_bytes == 128 * kv_bytes_per_position(tiny_weights)


def test_a_budget_in_gb_or_as_a_fraction(tiny_weights):
    gb = turbomind.plan_gpu_memory(tiny_weights, max_batch=8, max_session_len=1024, total_bytes=80 << 30, gpu_memory=4)
    share = turbomind.plan_gpu_memory(tiny_weights, max_batch=8, max_session_len=1024, total_bytes=80 << 30,
                                      gpu_memory=0.05)
    assert gb.budget_bytes == 4 << 30 and share.budget_bytes == int(0.05 * (80 << 30))
    assert gb.cache_bytes == gb.budget_bytes - gb.weights_bytes - gb.workspace_bytes
    assert gb.as_dict()["budget_mb"] == 4096.0


def test_a_budget_too_small_for_the_sessions_is_refused_with_the_numbers(tiny_weights):
    # The tiny model's KV cache is 256 bytes a position: 4096 sessions of 4096 need 4 GB.
    with pytest.raises(ValueError, match=r"gpu_memory 2\.00 GB cannot hold 4096 sessions of 4096 positions: "
                                         r"weights .* GB \+ KV cache 4\.00 GB \+ workspace 1\.50 GB .* it holds \d+ such"):
        turbomind.plan_gpu_memory(tiny_weights, max_batch=4096, max_session_len=4096, total_bytes=80 << 30, gpu_memory=2)
    with pytest.raises(ValueError, match="more than the GPU's"):
        turbomind.plan_gpu_memory(tiny_weights, max_batch=1, max_session_len=64, total_bytes=8 << 30, gpu_memory=9)
    for bad in (0, -1, True, "4", float("nan")):
        with pytest.raises(ValueError, match="gpu_memory must be"):
            turbomind.plan_gpu_memory(tiny_weights, max_batch=1, max_session_len=64, total_bytes=8 << 30,
                                      gpu_memory=bad)


def test_a_budget_and_a_cache_share_together_are_refused(monkeypatch):
    monkeypatch.setattr(turbomind, "check_turbomind", lambda **_: None)
    with pytest.raises(ValueError, match="not both"):
        turbomind.make_turbomind_engine(None, gpu_memory=4, cache_max_entry_count=0.5)
