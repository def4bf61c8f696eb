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
        turbomind.check_turbomind()


def test_the_pinned_lmdeploy_is_accepted(monkeypatch, as_if_built):
    fake = types.SimpleNamespace(__version__=turbomind.LMDEPLOY_VERSION)
    monkeypatch.setitem(sys.modules, "lmdeploy", fake)
    assert turbomind.check_turbomind() is fake


def test_another_turbomind_module_imported_first_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "_turbomind", types.SimpleNamespace(__file__="/elsewhere/_turbomind.so"))
    with pytest.raises(ImportError, match="another _turbomind module"):
        turbomind._bound_modules()


@pytest.mark.parametrize("share", [0.0, 1.0, 2.5])
def test_the_cache_share_must_be_a_fraction(monkeypatch, share):
    monkeypatch.setattr(turbomind, "check_turbomind", lambda: None)
    with pytest.raises(ValueError, match="cache_max_entry_count must be in \\(0, 1\\)"):
        turbomind.make_turbomind_engine(None, cache_max_entry_count=share)
