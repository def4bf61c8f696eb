"""CpuQwen2Engine against Hugging Face transformers' Qwen2Model (eager attention, float32).

A tiny model (2 layers, hidden 64) runs the same weights through both. Each check is one the
engine could fail: a wrong RoPE, norm, bias or cache bug moves the logits far beyond 1e-4.
"""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2Model

from cosyfast import _core
from cosyfast._core import CpuQwen2Engine, Engine

VOCAB = 100
HIDDEN = 64
REL_TOL = 1e-4


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


class Reference:
    """A seeded tiny Qwen2 in transformers plus the speech-style embedding and lm_head tables."""

    def __init__(self, seed=0):
        self.config = Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            max_position_embeddings=512,
            attn_implementation="eager",
        )
        torch.manual_seed(seed)
        self.model = Qwen2Model(self.config).eval().float()
        # HF's init (std 0.02) is meant for width ~1000; at width 64 it leaves every block close
        # to the identity and the logits flat. A larger std makes attention and MLP each move the
        # residual stream, so a mistake in any of them shows up in the logits.
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.1)
                else:
                    p.normal_(0.0, 0.15)
        gen = np.random.default_rng(seed)
        self.embed = gen.normal(0.0, 1.0, (VOCAB, HIDDEN)).astype(np.float32)
        self.lm_head = gen.normal(0.0, 0.5, (VOCAB, HIDDEN)).astype(np.float32)

    def engine_args(self):
        sd = {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}
        layers = []
        for i in range(self.config.num_hidden_layers):
            prefix = f"layers.{i}."
            layers.append({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
        c = self.config  # cosyfast's normalised config, as cosyfast.checkpoint writes it
        config = {k: getattr(c, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                             "num_key_value_heads", "intermediate_size", "rms_norm_eps")}
        config["head_dim"] = c.hidden_size // c.num_attention_heads
        config["rope_theta"] = float(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None)
                                     else c.rope_theta)
        return config, self.embed, self.lm_head, layers, sd["norm.weight"]

    def engine(self, **kwargs):
        return CpuQwen2Engine(*self.engine_args(), **kwargs)

    def logits(self, rows):
        """Logits of the last row of a full (uncached) forward over `rows` [n, hidden]."""
        with torch.no_grad():
            h = self.model(inputs_embeds=torch.from_numpy(rows)[None]).last_hidden_state[0, -1]
        return h.numpy() @ self.lm_head.T


@pytest.fixture(scope="module")
def ref():
    return Reference()


def prompt(n, seed):
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, HIDDEN)).astype(np.float32)


def step(engine, session, token):
    return engine.forward([(session, None, int(token))])[0]


def test_engine_properties(ref):
    engine = ref.engine(max_session_len=300)
    assert isinstance(engine, Engine)
    assert engine.name == "cpu_qwen2"
    assert engine.hidden_size == HIDDEN
    assert engine.vocab_size == VOCAB
    assert engine.max_session_len == 300
    assert engine.live_sessions == 0
    assert "layers=2" in repr(engine)


def test_prefill_matches_transformers(ref):
    engine = ref.engine()
    rows = prompt(12, seed=1)
    logits = engine.forward([(1, rows, None)])
    assert logits.shape == (1, VOCAB) and logits.dtype == np.float32
    expected = ref.logits(rows)
    assert np.std(expected) > 1.0  # the test model is not flat
    assert rel_err(logits[0], expected) < REL_TOL


def test_teacher_forced_steps_match_transformers(ref):
    engine = ref.engine()
    seq = prompt(12, seed=2)
    logits = engine.forward([(7, seq, None)])[0]
    expected = ref.logits(seq)
    assert rel_err(logits, expected) < REL_TOL
    for _ in range(50):
        token = int(np.argmax(expected))  # the token transformers would pick
        seq = np.concatenate([seq, ref.embed[token][None]])
        logits = step(engine, 7, token)
        expected = ref.logits(seq)
        assert rel_err(logits, expected) < REL_TOL, f"position {len(seq) - 1}"


def test_greedy_stream_matches_transformers(ref):
    rows = prompt(12, seed=3)
    engine = ref.engine()
    engine_tokens = [int(np.argmax(engine.forward([(3, rows, None)])[0]))]
    for _ in range(99):
        engine_tokens.append(int(np.argmax(step(engine, 3, engine_tokens[-1]))))

    # transformers with its own KV cache, fed the embedding rows of its own choices.
    hf_tokens = []
    with torch.no_grad():
        out = ref.model(inputs_embeds=torch.from_numpy(rows)[None], use_cache=True)
        for _ in range(100):
            h = out.last_hidden_state[0, -1].numpy()
            hf_tokens.append(int(np.argmax(h @ ref.lm_head.T)))
            out = ref.model(
                inputs_embeds=torch.from_numpy(ref.embed[hf_tokens[-1]])[None, None],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    assert len(set(hf_tokens)) > 5  # a stream that varies, not one repeated token
    assert engine_tokens == hf_tokens


def test_comparison_detects_a_wrong_rope_theta(ref):
    """Guards the tolerance itself: a plausible mistake must fail it."""
    config, embed, lm_head, layers, norm = ref.engine_args()
    config["rope_theta"] = 1e4
    engine = CpuQwen2Engine(config, embed, lm_head, layers, norm)
    rows = prompt(12, seed=4)
    assert rel_err(engine.forward([(1, rows, None)])[0], ref.logits(rows)) > 100 * REL_TOL


def test_the_engine_reads_the_normalised_config_of_the_one_spec(ref):
    """The engine takes cosyfast's normalised config (head_dim and rope_theta explicit; the
    checkpoint reader turns Hugging Face's layouts into it) and names a missing field."""
    config, embed, lm_head, layers, norm = ref.engine_args()
    for key in ("head_dim", "rope_theta"):
        with pytest.raises(ValueError, match=f"config is missing '{key}'"):
            CpuQwen2Engine({k: v for k, v in config.items() if k != key}, embed, lm_head, layers, norm)
    shapes = _core.qwen2_layer_shapes(config)
    assert tuple(shapes) == _core.QWEN2_LAYER_TENSORS
    assert shapes["self_attn.k_proj.weight"] == (config["num_key_value_heads"] * config["head_dim"],
                                                 config["hidden_size"])
    assert shapes["mlp.down_proj.weight"] == (config["hidden_size"], config["intermediate_size"])


def test_weights_are_copied(ref):
    config, embed, lm_head, layers, norm = ref.engine_args()
    embed, lm_head = embed.copy(), lm_head.copy()
    engine = CpuQwen2Engine(config, embed, lm_head, layers, norm)
    rows = prompt(6, seed=6)
    before = engine.forward([(1, rows, None)])
    lm_head[:] = 0.0
    layers[0]["mlp.up_proj.weight"][:] = 0.0
    assert np.array_equal(engine.forward([(2, rows, None)]), before)


def test_float64_inputs_are_converted(ref):
    config, embed, lm_head, layers, norm = ref.engine_args()
    layers64 = [{k: v.astype(np.float64) for k, v in layer.items()} for layer in layers]
    rows = prompt(6, seed=7)
    a = CpuQwen2Engine(config, embed, lm_head, layers, norm).forward([(1, rows, None)])
    b = CpuQwen2Engine(config, embed.astype(np.float64), lm_head, layers64, norm).forward(
        [(1, rows.astype(np.float64), None)]
    )
    assert np.array_equal(a, b)


def test_batched_steps_are_bit_identical_to_single_steps(ref):
    engine = ref.engine()
    prompts = {1: prompt(5, 11), 2: prompt(9, 12), 3: prompt(12, 13)}
    alone = {sid: sid + 10 for sid in prompts}  # twin sessions stepped one at a time

    # Prefill the batched sessions together and their twins one by one.
    together = engine.forward([(sid, rows, None) for sid, rows in prompts.items()])
    for i, (sid, rows) in enumerate(prompts.items()):
        assert np.array_equal(together[i], engine.forward([(alone[sid], rows, None)])[0])

    tokens = {sid: int(np.argmax(together[i])) for i, sid in enumerate(prompts)}
    orders = [[1, 2, 3], [3, 1, 2], [2, 3, 1], [3, 2, 1]]  # vary which rows share a tile
    for r in range(20):
        order = orders[r % len(orders)]
        batch = engine.forward([(sid, None, tokens[sid]) for sid in order])
        for i, sid in enumerate(order):
            single = step(engine, alone[sid], tokens[sid])
            assert np.array_equal(batch[i], single), f"round {r}, session {sid}"
            tokens[sid] = int(np.argmax(single))
    assert engine.live_sessions == 6


def test_prefill_and_steps_share_a_round_without_changing_results(ref):
    engine = ref.engine()
    engine.forward([(1, prompt(7, 21), None), (11, prompt(7, 21), None)])
    new_rows = prompt(10, 22)
    mixed = engine.forward([(1, None, 5), (2, new_rows, None)])
    assert np.array_equal(mixed[0], step(engine, 11, 5))
    assert np.array_equal(mixed[1], engine.forward([(12, new_rows, None)])[0])


def test_end_session(ref):
    engine = ref.engine()
    engine.forward([(1, prompt(4, 31), None), (2, prompt(4, 32), None)])
    assert engine.live_sessions == 2
    engine.end_session(1)
    engine.end_session(12345)  # unknown: a no-op
    assert engine.live_sessions == 1
    with pytest.raises(RuntimeError, match="session 1 is not live"):
        step(engine, 1, 0)
    # The id can be reused for a new prefill, which starts from position 0 again.
    rows = prompt(4, 33)
    assert rel_err(engine.forward([(1, rows, None)])[0], ref.logits(rows)) < REL_TOL


def test_errors_in_a_round(ref):
    engine = ref.engine(max_session_len=16)
    engine.forward([(1, prompt(12, 41), None)])
    with pytest.raises(RuntimeError, match="session 9 is not live"):
        step(engine, 9, 0)
    with pytest.raises(RuntimeError, match="session 1 is already live"):
        engine.forward([(1, prompt(3, 42), None)])
    with pytest.raises(ValueError, match=r"token 100 is out of range \[0, 100\)"):
        step(engine, 1, VOCAB)
    with pytest.raises(ValueError, match="token -1 is out of range"):
        step(engine, 1, -1)
    with pytest.raises(ValueError, match="session 1 appears more than once"):
        engine.forward([(1, None, 3), (1, None, 4)])
    with pytest.raises(ValueError, match=r"prompt_rows has shape \[3, 63\]"):
        engine.forward([(5, np.zeros((3, HIDDEN - 1), np.float32), None)])
    with pytest.raises(ValueError, match="needs a token"):
        engine.forward([(1, None, None)])
    with pytest.raises(RuntimeError, match="17 rows, more than max_session_len 16"):
        engine.forward([(2, prompt(17, 43), None)])
    for _ in range(4):  # 12 prompt rows + 4 tokens = 16 positions: the limit, allowed
        step(engine, 1, 0)
    full = "session 1 is full: it holds 16 positions and max_session_len is 16"
    with pytest.raises(RuntimeError, match=full):
        step(engine, 1, 0)
    assert engine.live_sessions == 1


def test_a_rejected_round_changes_nothing(ref):
    engine = ref.engine()
    rows = prompt(8, 51)
    engine.forward([(1, rows, None), (2, rows, None)])
    # One bad input (unknown session 3) rejects the whole round: session 1 does not advance
    # and session 4 is not created.
    with pytest.raises(RuntimeError, match="session 3 is not live"):
        engine.forward([(1, None, 7), (4, prompt(5, 52), None), (3, None, 7)])
    assert engine.live_sessions == 2
    assert np.array_equal(step(engine, 1, 7), step(engine, 2, 7))
    engine.forward([(4, prompt(5, 52), None)])  # the rejected prefill left no trace


def test_bad_weights_are_named(ref):
    config, embed, lm_head, layers, norm = ref.engine_args()

    def build(**changes):
        args = dict(config=config, embed_tokens=embed, lm_head=lm_head, layers=layers, norm=norm)
        args.update(changes)
        return CpuQwen2Engine(**args)

    wrong = [dict(layer) for layer in layers]
    wrong[1]["mlp.down_proj.weight"] = wrong[1]["mlp.down_proj.weight"].T.copy()
    named = r"layers\[1\]\['mlp.down_proj.weight'\] has shape \[128, 64\], expected \[64, 128\]"
    with pytest.raises(ValueError, match=named):
        build(layers=wrong)

    missing = [dict(layer) for layer in layers]
    del missing[0]["self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"layers\[0\] is missing 'self_attn.k_proj.bias'"):
        build(layers=missing)

    extra = [dict(layer) for layer in layers]
    extra[0]["self_attn.o_proj.bias"] = np.zeros(HIDDEN, np.float32)
    with pytest.raises(ValueError, match="unexpected tensor 'self_attn.o_proj.bias'"):
        build(layers=extra)

    with pytest.raises(ValueError, match=r"lm_head has shape \[99, 64\], expected \[100, 64\]"):
        build(lm_head=lm_head[:99])
    with pytest.raises(ValueError, match=r"norm has shape \[65\], expected \[64\]"):
        build(norm=np.ones(HIDDEN + 1, np.float32))
    with pytest.raises(ValueError, match="layers has 1 entries but config"):
        build(layers=layers[:1])

    with pytest.raises(ValueError, match="config is missing 'intermediate_size'"):
        build(config={k: v for k, v in config.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match=r"heads \(4\) must be a multiple of kv_heads \(3\)"):
        build(config=dict(config, num_key_value_heads=3))
    with pytest.raises(ValueError, match="max_session_len must be >= 1"):
        build(max_session_len=0)
