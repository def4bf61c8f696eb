"""cosyfast.checkpoint and cosyfast.synthetic: round trips, determinism, and every error path."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyfast.checkpoint import (
    LAYER_KEYS,
    CheckpointError,
    CheckpointWarning,
    expected_shapes,
    file_sha256,
    load_checkpoint,
)
from cosyfast.synthetic import SIZES, ensure_default_model, write_model_dir

Q = "llm.model.model."
CFG = Path("CosyVoice-BlankEN") / "config.json"
State = dict[str, torch.Tensor]


def _state(model_dir: Path) -> State:
    return torch.load(model_dir / "llm.pt", map_location="cpu", weights_only=True)


def _variant(src: Path, dst: Path, mutate: Callable[[State], object] | None = None,
             config: Callable[[dict], object] | None = None, keep_config: bool = True) -> Path:
    """A copy of model dir `src` at `dst` with its state dict and/or config.json edited."""
    dst.mkdir(parents=True)
    state = _state(src)
    if mutate:
        mutate(state)
    torch.save(state, dst / "llm.pt")
    if keep_config:
        cfg = json.loads((src / CFG).read_text())
        if config:
            config(cfg)
        (dst / CFG).parent.mkdir()
        (dst / CFG).write_text(json.dumps(cfg))
    return dst


# --- round trips ------------------------------------------------------------------------------

def test_cv2_round_trip(tiny_cv2_dir: Path) -> None:
    w = load_checkpoint(tiny_cv2_dir)
    src = _state(tiny_cv2_dir)
    h = SIZES["tiny"]["hidden"]
    assert w.kind == "cosyvoice2"
    assert w.config == dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128, rms_norm_eps=1e-6,
                            rope_theta=1e6, head_dim=16)
    assert w.text_embedding.shape == (151936, h)
    assert w.speech_embedding.shape == w.decoder_weight.shape == (6564, h)
    assert w.decoder_bias is not None and w.decoder_bias.shape == (6564,)
    np.testing.assert_array_equal(w.sos, src["llm_embedding.weight"][0].numpy())
    np.testing.assert_array_equal(w.task_id, src["llm_embedding.weight"][1].numpy())
    np.testing.assert_array_equal(w.text_embedding, src[Q + "embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(w.decoder_bias, src["llm_decoder.bias"].numpy())
    np.testing.assert_array_equal(w.norm, src[Q + "norm.weight"].numpy())
    assert len(w.layers) == 2 and all(tuple(layer) == LAYER_KEYS for layer in w.layers)
    assert w.layers[1]["self_attn.q_proj.weight"].shape == (64, 64)
    assert w.layers[1]["self_attn.k_proj.weight"].shape == (32, 64)
    assert w.layers[1]["mlp.down_proj.weight"].shape == (64, 128)
    np.testing.assert_array_equal(w.layers[1]["mlp.up_proj.weight"],
                                  src[Q + "layers.1.mlp.up_proj.weight"].numpy())
    assert w.vocab == dict(name="cosyvoice2", speech_token_size=6561, decoder_rows=6564, eos=6561,
                           stop_ids=[6561, 6562, 6563], fill_token=6563, required_text_id=-1)
    assert w.padded_vocab() == 6592 and w.padded_vocab(128) == 6656
    assert w.source_hash == file_sha256(tiny_cv2_dir / "llm.pt")
    assert w.source_path == (tiny_cv2_dir / "llm.pt").resolve()
    arrays = [w.text_embedding, w.speech_embedding, w.sos, w.task_id, w.decoder_weight,
              w.decoder_bias, w.norm, *w.layers[0].values()]
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)
    assert "cosyvoice2" in repr(w) and "[" not in repr(w)  # no array dumps


def test_cv3_round_trip(tiny_cv3_dir: Path) -> None:
    w = load_checkpoint(tiny_cv3_dir)
    src = _state(tiny_cv3_dir)
    assert w.kind == "cosyvoice3"
    assert w.speech_embedding.shape == w.decoder_weight.shape == (6761, 64)
    assert w.decoder_bias is None
    speech = src["speech_embedding.weight"].numpy()
    np.testing.assert_array_equal(w.sos, speech[6561])
    np.testing.assert_array_equal(w.task_id, speech[6563])
    assert w.vocab["eos"] == 6562 and w.vocab["fill_token"] == 6564
    assert w.vocab["stop_ids"] == list(range(6561, 6761))
    assert w.vocab["required_text_id"] == 151646 and w.vocab["decoder_rows"] == 6761
    assert w.padded_vocab() == 6784


def test_llm_pt_path_finds_config_beside_it(tiny_cv3_dir: Path) -> None:
    assert load_checkpoint(tiny_cv3_dir / "llm.pt").config == load_checkpoint(tiny_cv3_dir).config


def test_expected_shapes_match_the_real_cv2_layout() -> None:
    """Hard-coded facts from COSYVOICE_LLM.md, independent of how synthetic builds its keys."""
    full = dict(num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
                num_key_value_heads=2, intermediate_size=4864)
    s = expected_shapes("cosyvoice2", full)
    assert len(s) == 1 + 1 + 24 * 12 + 1 + 2 + 1
    assert s["llm_embedding.weight"] == (2, 896)
    assert s[Q + "embed_tokens.weight"] == (151936, 896)
    assert s[Q + "layers.23.self_attn.q_proj.weight"] == (896, 896)
    assert s[Q + "layers.23.self_attn.k_proj.weight"] == (128, 896)
    assert s[Q + "layers.0.self_attn.v_proj.bias"] == (128,)
    assert s[Q + "layers.0.mlp.down_proj.weight"] == (896, 4864)
    assert s["llm_decoder.bias"] == (6564,) and s["speech_embedding.weight"] == (6564, 896)
    s3 = expected_shapes("cosyvoice3", full)
    assert "llm_embedding.weight" not in s3 and "llm_decoder.bias" not in s3
    assert s3["llm_decoder.weight"] == s3["speech_embedding.weight"] == (6761, 896)


def test_synthetic_files_and_keys(tiny_cv2_dir: Path, tiny_cv3_dir: Path) -> None:
    for d, kind in ((tiny_cv2_dir, "cosyvoice2"), (tiny_cv3_dir, "cosyvoice3")):
        cfg = json.loads((d / CFG).read_text())
        assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["vocab_size"] == 151936
        assert "speech_token_size: 6561" in (d / f"{kind}.yaml").read_text()
        state = _state(d)
        expected = expected_shapes(kind, load_checkpoint(d).config)
        assert set(state) == set(expected) | {"llm.model.lm_head.weight"}
        assert all(tuple(state[k].shape) == v for k, v in expected.items())
    assert not list(tiny_cv2_dir.glob(".*.tmp"))  # no temporaries left behind


def test_synthetic_is_deterministic_by_seed(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    same = write_model_dir(tmp_path / "same", kind="cosyvoice2", size="tiny", seed=0)
    other = write_model_dir(tmp_path / "other", kind="cosyvoice2", size="tiny", seed=1)
    ref, a, b = _state(tiny_cv2_dir), _state(same), _state(other)
    assert all(torch.equal(ref[k], a[k]) for k in ref)
    assert not any(torch.equal(ref[k], b[k]) for k in ref)
    # byte-identical too, so a rebuilt synthetic model hits the export cache (keyed by hash)
    assert file_sha256(same / "llm.pt") == file_sha256(tiny_cv2_dir / "llm.pt")


def test_synthetic_logit_spread(tiny_cv2_dir: Path) -> None:
    """decoder_scale is the logit std for a unit-RMS hidden state (what the final norm yields)."""
    w = load_checkpoint(tiny_cv2_dir)
    h = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    logits = h @ w.decoder_weight.T
    assert 2.0 < logits.std() < 4.0


def test_bf16_checkpoint_is_converted(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "bf16", kind="cosyvoice3", size="tiny", dtype=torch.bfloat16)
    w = load_checkpoint(d)
    src = _state(d)
    assert src["speech_embedding.weight"].dtype == torch.bfloat16
    assert w.speech_embedding.dtype == np.float32
    np.testing.assert_array_equal(w.speech_embedding,
                                  src["speech_embedding.weight"].float().numpy())


def test_nested_state_dict_and_missing_lm_head(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    def nest(state: State) -> None:
        del state["llm.model.lm_head.weight"]
        inner = dict(state)
        state.clear()
        state["state_dict"] = inner  # type: ignore[assignment]
    d = _variant(tiny_cv2_dir, tmp_path / "nested", nest)
    assert load_checkpoint(d).kind == "cosyvoice2"


def test_config_heads_are_read_from_config_json(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    # 8 heads of 8 and 4 KV heads keep the q/k/v shapes, so only config.json says which it is.
    d = _variant(tiny_cv2_dir, tmp_path / "heads", config=lambda c: c.update(
        num_attention_heads=8, num_key_value_heads=4, rope_theta=5e5))
    cfg = load_checkpoint(d).config
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 4, 8)
    assert cfg["rope_theta"] == 5e5


def test_explicit_config_dict_overrides(tiny_cv2_dir: Path) -> None:
    cfg = json.loads((tiny_cv2_dir / CFG).read_text())
    cfg.update(num_attention_heads=2, num_key_value_heads=1)
    assert load_checkpoint(tiny_cv2_dir, config=cfg).config["head_dim"] == 32


def test_heads_inferred_without_config_warns(tmp_path: Path) -> None:
    size = dict(layers=1, hidden=128, heads=2, kv_heads=1, ffn=96)
    d = write_model_dir(tmp_path / "m", kind="cosyvoice3", size=size)
    (d / CFG).unlink()
    with pytest.warns(CheckpointWarning, match="assuming head_dim 64"):
        cfg = load_checkpoint(d).config
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"],
            cfg["intermediate_size"]) == (2, 1, 1, 96)


def test_ensure_default_model_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = ensure_default_model(tmp_path, kind="cosyvoice3")
    assert d == tmp_path / "synthetic" / "cosyvoice3-tiny-seed0"
    stamp = (d / "llm.pt").stat().st_mtime_ns
    assert ensure_default_model(tmp_path, kind="cosyvoice3") == d
    assert (d / "llm.pt").stat().st_mtime_ns == stamp
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # no temporary directories left
    assert load_checkpoint(d).kind == "cosyvoice3"
    monkeypatch.setenv("COSYFAST_CACHE", str(tmp_path / "env"))
    assert ensure_default_model() == tmp_path / "env" / "synthetic" / "cosyvoice2-tiny-seed0"


def test_synthetic_loads_into_hugging_face_qwen2(tiny_cv2_dir: Path) -> None:
    """The key names and config.json are what transformers' own Qwen2 expects."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(**json.loads((tiny_cv2_dir / CFG).read_text()))
    model = transformers.Qwen2ForCausalLM(cfg)
    qwen = {k.removeprefix("llm.model."): v for k, v in _state(tiny_cv2_dir).items()
            if k.startswith("llm.model.")}
    model.load_state_dict(qwen, strict=True)


# --- errors -----------------------------------------------------------------------------------

def test_missing_layer_key(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    key = Q + "layers.1.mlp.up_proj.weight"
    d = _variant(tiny_cv2_dir, tmp_path / "m", lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        load_checkpoint(d)


def test_first_missing_key_is_named(tiny_cv3_dir: Path, tmp_path: Path) -> None:
    later, first = Q + "layers.1.input_layernorm.weight", Q + "layers.0.self_attn.v_proj.bias"
    d = _variant(tiny_cv3_dir, tmp_path / "m", lambda s: (s.pop(later), s.pop(first)))
    with pytest.raises(CheckpointError, match=f"missing key '{first}'"):
        load_checkpoint(d)


def test_wrong_shape(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    key = Q + "layers.0.self_attn.k_proj.weight"
    d = _variant(tiny_cv2_dir, tmp_path / "m", lambda s: s.update({key: torch.zeros(48, 64)}))
    with pytest.raises(CheckpointError,
                       match=rf"'{key}' has shape \[48, 64\], expected \[32, 64\]"):
        load_checkpoint(d)


@pytest.mark.parametrize(
    "content", [b"hello, I am a text file\n", bytes(range(256)) * 64, b"", b"PK\x03\x04" + bytes(100)],
    ids=["text", "bytes", "empty", "zip"])
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "llm.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"llm\.pt is not a torch checkpoint"):
        load_checkpoint(f)
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(tmp_path)


class _Opaque:  # a pickled object weights_only loading must refuse
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"x": _Opaque()}, tmp_path / "llm.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True: .*_Opaque"):
        load_checkpoint(tmp_path)


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "llm.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        load_checkpoint(tmp_path)


def test_directory_without_llm_pt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory without llm.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_cv3_with_decoder_bias_is_rejected(tiny_cv3_dir: Path, tmp_path: Path) -> None:
    """Upstream CosyVoice3LM has bias=False and loads strict=True: such a file would not load."""
    d = _variant(tiny_cv3_dir, tmp_path / "m",
                 lambda s: s.update({"llm_decoder.bias": torch.zeros(6761)}))
    with pytest.raises(CheckpointError, match="unexpected key 'llm_decoder.bias'.*no bias"):
        load_checkpoint(d)


def test_cv2_without_llm_embedding(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m", lambda s: s.pop("llm_embedding.weight"))
    with pytest.raises(CheckpointError, match="missing key 'llm_embedding.weight'"):
        load_checkpoint(d)


def test_unknown_layout(tiny_cv3_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv3_dir, tmp_path / "m",
                 lambda s: s.update({"speech_embedding.weight": torch.zeros(7000, 64)}))
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout .*\[7000, 64\]"):
        load_checkpoint(d)


def test_config_heads_not_dividing_hidden(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m", config=lambda c: c.update(num_attention_heads=5))
    with pytest.raises(CheckpointError, match=r"config\.json: num_attention_heads 5 does not "
                                              r"divide hidden_size 64"):
        load_checkpoint(d)


def test_config_inconsistent_with_weights(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "h", config=lambda c: c.update(hidden_size=896,
                                                                         num_attention_heads=14))
    with pytest.raises(CheckpointError, match="hidden_size 896 does not match .* 64"):
        load_checkpoint(d)
    d = _variant(tiny_cv2_dir, tmp_path / "n", config=lambda c: c.update(num_hidden_layers=1))
    with pytest.raises(CheckpointError, match="num_hidden_layers is 1 but the checkpoint has 2"):
        load_checkpoint(d)
    d = _variant(tiny_cv2_dir, tmp_path / "kv", config=lambda c: c.update(num_key_value_heads=4))
    with pytest.raises(CheckpointError, match=r"k_proj.weight' has shape \[32, 64\], expected "
                                              r"\[64, 64\].*sizes: .*config\.json"):
        load_checkpoint(d)


def test_config_not_json(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m")
    (d / CFG).write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*config.json as a JSON config"):
        load_checkpoint(d)


def test_tiny_without_config_cannot_guess_heads(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m", keep_config=False)
    with pytest.raises(CheckpointError, match="head count cannot be inferred"):
        load_checkpoint(d)


def test_non_finite_weights(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m",
                 lambda s: s[Q + "norm.weight"].__setitem__(3, float("nan")))
    with pytest.raises(CheckpointError, match="'llm.model.model.norm.weight' holds NaN"):
        load_checkpoint(d)


def test_unexpected_extra_key_warns(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    d = _variant(tiny_cv2_dir, tmp_path / "m", lambda s: s.update({"foo.weight": torch.zeros(1)}))
    with pytest.warns(CheckpointWarning, match="ignoring 1 unexpected key.*foo.weight"):
        load_checkpoint(d)


def test_synthetic_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        write_model_dir(tmp_path, kind="cosyvoice1")
    with pytest.raises(ValueError, match="unknown size"):
        write_model_dir(tmp_path, size="huge")
    with pytest.raises(ValueError, match="heads must divide hidden"):
        write_model_dir(tmp_path, size=dict(layers=1, hidden=60, heads=7, kv_heads=1, ffn=8))
