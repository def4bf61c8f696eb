"""The layouts the C++ TurboMind loader uploads (csrc/engines/turbomind_layout.h), on the CPU,
against an independent NumPy layout written from lmdeploy 0.16.0's converter as
docs/turbomind_weights.md describes it: linear weights transposed to [in, out]; q and k columns
(weights and biases) reordered per head so rotate-half pairs become adjacent; w_qkv = [q | k | v];
gate/up concatenated, or in 64-column blocks on Hopper; the vocabulary zero-padded to 64. The
GPU test (test_turbomind_loader_gpu.py) checks the same bytes inside TurboMind."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosyfast import _core

CONFIG = dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=192, rms_norm_eps=1e-6, rope_theta=10000.0)


def bf16(x: np.ndarray) -> np.ndarray:
    """torch's float32 -> bfloat16 rounding (the one lmdeploy's path uses), as raw bits."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy() \
        .view(np.uint16)


def rotary_reorder(columns: np.ndarray, head_dim: int) -> np.ndarray:
    """lmdeploy's reorder on the last axis: per head, view (2, head_dim/2), swap the two axes."""
    lead = columns.shape[:-1]
    heads = columns.shape[-1] // head_dim
    x = columns.reshape(*lead, heads, 2, head_dim // 2)
    return np.swapaxes(x, -1, -2).reshape(*lead, heads * head_dim)


def reference_layer(layer: dict[str, np.ndarray], blocks64: bool) -> dict[str, np.ndarray]:
    hd = CONFIG["head_dim"]
    t = {k: v.T if v.ndim == 2 else v for k, v in layer.items()}  # [out, in] -> [in, out]
    q, k = rotary_reorder(t["self_attn.q_proj.weight"], hd), rotary_reorder(t["self_attn.k_proj.weight"], hd)
    qb, kb = rotary_reorder(t["self_attn.q_proj.bias"], hd), rotary_reorder(t["self_attn.k_proj.bias"], hd)
    gate, up = t["mlp.gate_proj.weight"], t["mlp.up_proj.weight"]
    if blocks64:
        groups = gate.shape[1] // 64
        w1w3 = np.stack([gate.reshape(-1, groups, 64), up.reshape(-1, groups, 64)], axis=-2).reshape(gate.shape[0], -1)
    else:
        w1w3 = np.concatenate([gate, up], axis=1)
    out = {
        "w_qkv": np.concatenate([q, k, t["self_attn.v_proj.weight"]], axis=1),
        "qkv_bias": np.concatenate([qb, kb, t["self_attn.v_proj.bias"]]),
        "wo": t["self_attn.o_proj.weight"],
        "w1w3": w1w3,
        "w2": t["mlp.down_proj.weight"],
        "attention_norm": t["input_layernorm.weight"],
        "ffn_norm": t["post_attention_layernorm.weight"],
    }
    return {name: bf16(v) for name, v in out.items()}


@pytest.fixture
def layer() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in _core.qwen2_layer_shapes(CONFIG).items()}


@pytest.mark.parametrize("blocks64", [False, True], ids=["concatenated", "hopper-blocks"])
def test_layer_layout_matches_an_independent_one(layer, blocks64):
    got = _core.testing.turbomind_layer_layout(CONFIG, layer, blocks64)
    want = reference_layer(layer, blocks64)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name]), name


def test_the_rotary_reorder_pairs_rotate_half_columns(layer):
    """Column 2j + s of each head holds Hugging Face's column s * head_dim/2 + j (a spot check of
    the permutation itself, apart from the reference's reshapes)."""
    got = _core.testing.turbomind_layer_layout(CONFIG, layer, False)["w_qkv"]
    q = bf16(layer["self_attn.q_proj.weight"].T)
    hd = CONFIG["head_dim"]
    for head, j, s in [(0, 0, 1), (1, 3, 0), (3, 7, 1)]:
        assert np.array_equal(got[:, head * hd + 2 * j + s], q[:, head * hd + s * hd // 2 + j])


def test_a_wrong_layout_would_be_caught(layer):
    """The comparison can fail: the reference without the rotary reorder differs from the C++ one."""
    got = _core.testing.turbomind_layer_layout(CONFIG, layer, False)["w_qkv"]
    plain = bf16(np.concatenate([layer[f"self_attn.{x}_proj.weight"].T for x in "qkv"], axis=1))
    assert not np.array_equal(got, plain)


def test_hopper_blocks_need_an_intermediate_size_of_64s(layer):
    config = dict(CONFIG, intermediate_size=96)
    small = {name: np.zeros(shape, np.float32) for name, shape in _core.qwen2_layer_shapes(config).items()}
    with pytest.raises(ValueError, match="not a multiple of 64"):
        _core.testing.turbomind_layer_layout(config, small, True)
    assert _core.testing.turbomind_layer_layout(config, small, False)["w1w3"].shape == (64, 192)


@pytest.mark.parametrize("vocab", [6561 + 3, 64, 65])
def test_vocabulary_tables_are_padded_to_64_rows(vocab):
    rng = np.random.default_rng(vocab)
    embed = rng.standard_normal((vocab, 8)).astype(np.float32)
    lm_head = rng.standard_normal((vocab, 8)).astype(np.float32)
    tok, out = _core.testing.turbomind_vocab_layout(embed, lm_head)
    padded = -(-vocab // 64) * 64
    assert tok.shape == (padded, 8) and out.shape == (8, padded)
    assert np.array_equal(tok[:vocab], bf16(embed)) and not tok[vocab:].any()
    assert np.array_equal(out[:, :vocab], bf16(lm_head.T)) and not out[:, vocab:].any()


@pytest.mark.parametrize("table_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["cosyvoice2", "cosyvoice3"])
def test_prompt_speech_as_ids_gives_turbomind_the_bytes_the_rows_held(kind: str, table_dtype: str,
                                                                      tiny_dirs: dict) -> None:
    """TurboMind's generator sends the voice prompt's speech tokens as ids (its token embedding is
    the speech embedding) and only sos, the text and task_id as rows (engines/turbomind_inputs.h):
    what TurboMind embeds, position by position (a row where the rows reach, else tok_embeddings at
    the id), must be byte for byte the all-rows request it was sent before, with the same lengths."""
    from cosyfast.checkpoint import load_checkpoint

    w = load_checkpoint(tiny_dirs[kind])
    tables = _core.PromptTables(text_embedding=w.text_embedding, speech_embedding=w.speech_embedding, sos=w.sos,
                                task_id=w.task_id, table_dtype=table_dtype)
    rng = np.random.default_rng(7)
    text = rng.integers(0, 1000, 12).tolist() + ([151646] if kind == "cosyvoice3" else [])
    prompt_text = rng.integers(0, 1000, 5).tolist()
    speech = rng.integers(0, w.vocab["speech_token_size"], 40).tolist()
    before, now = (_core.testing.turbomind_prompt(tables, w.vocab, text, prompt_text, speech, 512, as_ids)
                   for as_ids in (False, True))
    length = 2 + len(prompt_text) + len(text) + len(speech)
    assert before["prompt_len"] == now["prompt_len"] == length == len(before["ids"]) == len(now["ids"])
    assert (now["min_len"], now["max_len"]) == (before["min_len"], before["max_len"])
    assert before["row_positions"] == length and now["row_positions"] == length - len(speech)
    assert now["ids"] == [0] * now["row_positions"] + speech
    tok_embeddings, _ = _core.testing.turbomind_vocab_layout(w.speech_embedding, w.speech_embedding)
    embedded = np.concatenate([now["rows"], tok_embeddings[now["ids"][now["row_positions"]:]]])
    np.testing.assert_array_equal(embedded, before["rows"])
    # and the rows by numpy and torch alone (both paths above share the C++ row assembler): rounding
    # a bf16 table's already rounded values changes nothing, so one reference serves both dtypes
    want = bf16(np.concatenate([w.sos[None], w.text_embedding[prompt_text + text], w.task_id[None]]))
    np.testing.assert_array_equal(now["rows"], want)
    # a speech token outside the table is still refused when it goes as an id
    with pytest.raises(ValueError, match="prompt speech token"):
        _core.testing.turbomind_prompt(tables, w.vocab, text, prompt_text, [w.vocab["speech_token_size"]], 512, True)
