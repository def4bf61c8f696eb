"""The CPU-testable parts of the TurboMind setup: the version check and the EngineConfig fields set
on the way into lmdeploy's factory (the GPU file tests the engine itself)."""
import sys
import types

import pytest

from cosyfast import turbomind


class _FakeConfig:
    max_context_token_num = 0


class _FakeTurboMind:
    """Stands for _turbomind.TurboMind: `create` is a static factory, as in the binding."""

    seen: list = []

    @staticmethod
    def create(model_dir, engine_config):
        _FakeTurboMind.seen.append((model_dir, engine_config.max_context_token_num))
        return "model"


def test_engine_config_fields_reach_the_factory_and_are_undone():
    module = types.SimpleNamespace(TurboMind=_FakeTurboMind)
    original = _FakeTurboMind.__dict__["create"]
    with turbomind._engine_config_fields(module, max_context_token_num=1 << 20):
        assert _FakeTurboMind.create("dir", _FakeConfig()) == "model"
    assert _FakeTurboMind.seen[-1] == ("dir", 1 << 20)
    assert _FakeTurboMind.__dict__["create"] is original
    _FakeTurboMind.create("dir2", _FakeConfig())
    assert _FakeTurboMind.seen[-1] == ("dir2", 0)


def test_engine_config_fields_undone_after_an_error():
    module = types.SimpleNamespace(TurboMind=_FakeTurboMind)
    original = _FakeTurboMind.__dict__["create"]
    with pytest.raises(RuntimeError):
        with turbomind._engine_config_fields(module, max_context_token_num=5):
            raise RuntimeError("load failed")
    assert _FakeTurboMind.__dict__["create"] is original


@pytest.mark.parametrize("version", ["0.13.2", "0.15.0", "1.0.0"])
def test_other_lmdeploy_versions_are_refused(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "lmdeploy", types.SimpleNamespace(__version__=version))
    with pytest.raises(ImportError, match=f"needs lmdeploy 0.14.x, found {version}"):
        turbomind.check_lmdeploy()


def test_lmdeploy_0_14_is_accepted(monkeypatch):
    fake = types.SimpleNamespace(__version__="0.14.0")
    monkeypatch.setitem(sys.modules, "lmdeploy", fake)
    assert turbomind.check_lmdeploy() is fake
