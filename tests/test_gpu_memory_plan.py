"""The TurboMind engine's GPU memory plan, C++'s (csrc/core/gpu_memory.h) through _core: the one
implementation that cosyfast.turbomind and the C API share. No GPU needed: the caller passes the
GPU's total and free bytes in."""
import math
import re
from dataclasses import asdict

import numpy as np
import pytest

from cosyfast import _core, turbomind

GIB = 1 << 30

# CosyVoice2's LLM (Qwen2.5-0.5B's shape) and its speech vocabulary padded to 64.
CV2 = {"num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
       "head_dim": 64, "intermediate_size": 4864, "rms_norm_eps": 1e-6, "rope_theta": 1e6}
CV2_PADDED_VOCAB = 6592


def cv2_weights_bytes() -> int:
    """bf16 weights of the CV2 shape, from the Qwen2 architecture written out here by hand (not
    from cpu_qwen2.h's table, which the plan uses)."""
    hidden, q, kv, ffn = 896, 14 * 64, 2 * 64, 4864
    attention = (q * hidden + q) + 2 * (kv * hidden + kv) + hidden * q  # q/k/v with biases, o without
    mlp = 3 * ffn * hidden                                              # gate, up, down
    per_layer = attention + mlp + 2 * hidden                            # the two layernorms
    params = 2 * CV2_PADDED_VOCAB * hidden + hidden + 24 * per_layer    # embedding, lm_head, final norm
    return 2 * params


KV_PER_POSITION = 24 * 2 * 2 * 64 * 2  # layers x (K, V) x kv_heads x head_dim x bf16


def plan(max_batch=256, max_session_len=4096, total_bytes=80 * GIB, gpu_memory=None):
    return _core.plan_gpu_memory(CV2, CV2_PADDED_VOCAB, max_batch, max_session_len, total_bytes, gpu_memory)


def test_the_constants_are_turbominds():
    assert _core.GPU_WORKSPACE_BYTES == 3 * GIB // 2
    assert _core.CACHE_BLOCK_TOKENS == 64
    assert turbomind.WORKSPACE_BYTES == _core.GPU_WORKSPACE_BYTES
    assert turbomind.CACHE_BLOCK_TOKENS == _core.CACHE_BLOCK_TOKENS


def test_the_default_plan_of_cosyvoice2():
    p = plan()
    assert cv2_weights_bytes() == 739_421_952  # 705 MiB: 370M parameters
    assert p == {"budget_bytes": cv2_weights_bytes() + 12 * GIB + 3 * GIB // 2,
                 "weights_bytes": cv2_weights_bytes(),
                 "kv_bytes": 256 * 4096 * KV_PER_POSITION,  # 12 GiB
                 "workspace_bytes": 3 * GIB // 2}
    assert p["kv_bytes"] == 12 * GIB
    # A session takes whole 64-position blocks.
    assert plan(max_batch=3, max_session_len=100)["kv_bytes"] == 3 * 128 * KV_PER_POSITION
    assert plan(max_batch=1, max_session_len=64)["kv_bytes"] == 64 * KV_PER_POSITION


def test_the_plan_counts_the_weights_the_checkpoint_reader_loads(tiny_cv2_dir):
    from cosyfast.checkpoint import load_checkpoint

    w = load_checkpoint(tiny_cv2_dir)
    # What the Python plan counted before it moved to C++: the tensors themselves.
    params = 2 * w.padded_vocab() * w.config["hidden_size"] + w.norm.size
    params += sum(v.size for layer in w.layers for v in layer.values())
    p = turbomind.plan_gpu_memory(w, max_batch=2, max_session_len=128, total_bytes=80 * GIB)
    assert p.weights_bytes == 2 * params
    # And for the CV2 shape, the tensors as the checkpoint reader expects them.
    shapes = _core.qwen2_layer_shapes(CV2)
    per_layer = sum(math.prod(s) for s in shapes.values())
    assert 2 * (2 * CV2_PADDED_VOCAB * 896 + 896 + 24 * per_layer) == plan()["weights_bytes"]


def test_the_python_plan_is_the_cpp_one(tiny_cv2_dir):
    from cosyfast.checkpoint import load_checkpoint

    w = load_checkpoint(tiny_cv2_dir)
    for gpu_memory in (None, 4, 0.05):
        p = turbomind.plan_gpu_memory(w, max_batch=8, max_session_len=1024, total_bytes=80 * GIB,
                                      gpu_memory=gpu_memory)
        assert asdict(p) == _core.plan_gpu_memory(w.config, w.padded_vocab(), 8, 1024, 80 * GIB, gpu_memory)


def test_a_budget_in_gb_or_as_a_fraction():
    assert plan(gpu_memory=20)["budget_bytes"] == 20 * GIB
    assert plan(gpu_memory=20.5)["budget_bytes"] == 41 * GIB // 2
    assert plan(gpu_memory=0.5)["budget_bytes"] == 40 * GIB
    assert plan(gpu_memory=1)["budget_bytes"] == 80 * GIB  # 1 is a fraction: all of it
    odd_total = 143_771_090_944  # an H200's, not a multiple of anything useful
    assert plan(total_bytes=odd_total, gpu_memory=0.3)["budget_bytes"] == int(0.3 * odd_total)  # truncated
    # The split does not depend on the budget.
    p = plan(gpu_memory=20)
    assert p["weights_bytes"] == cv2_weights_bytes() and p["kv_bytes"] == 12 * GIB


BAD_SENTENCE = "gpu_memory must be GB (> 1) or a fraction of the GPU's memory (<= 1), got "


@pytest.mark.parametrize("bad", [0, 0.0, -0.0, -1, -0.5, float("nan"), float("inf"), -float("inf"), 1e6, 2e6,
                                 10 ** 400, True, False, "4", [4]])
def test_a_budget_that_is_no_budget_is_refused(bad):
    with pytest.raises(ValueError, match=re.escape(BAD_SENTENCE + repr(bad)) + "$"):
        plan(gpu_memory=bad)


def test_a_budget_just_below_the_limit_is_a_budget_in_gb():
    with pytest.raises(ValueError, match=r"gpu_memory 999999\.90 GB is more than the GPU's 80\.00 GB$"):
        plan(gpu_memory=999999.9)


def test_a_budget_over_the_gpu_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"^gpu_memory 90\.00 GB is more than the GPU's 80\.00 GB$"):
        plan(gpu_memory=90)
    # The default budget too, when the sessions asked for need more than the GPU has.
    with pytest.raises(ValueError, match=r"^gpu_memory 14\.19 GB is more than the GPU's 8\.00 GB$"):
        plan(total_bytes=8 * GIB)


def test_a_budget_too_small_for_the_sessions_says_how_many_fit():
    w = cv2_weights_bytes()
    per_session = 4096 * KV_PER_POSITION
    fits = (4 * GIB - w - 3 * GIB // 2) // per_session
    assert fits == 38
    expected = ("gpu_memory 4.00 GB cannot hold 256 sessions of 4096 positions: weights 0.69 GB + KV cache "
                "12.00 GB + workspace 1.50 GB = 14.19 GB; it holds 38 such sessions: lower max_batch or "
                "max_session_len, or give more memory")
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        plan(gpu_memory=4)
    # A budget below weights + workspace holds none (not a negative count).
    with pytest.raises(ValueError, match=r"^gpu_memory 2\.00 GB cannot hold 1 sessions .* it holds 0 such"):
        plan(max_batch=1, gpu_memory=2)
    # Exactly enough is enough.
    p = plan(max_batch=38, gpu_memory=4)
    assert p["budget_bytes"] - p["weights_bytes"] - p["workspace_bytes"] >= p["kv_bytes"]


def test_the_shape_and_sizes_are_checked():
    with pytest.raises(ValueError, match="config is missing 'head_dim'"):
        _core.plan_gpu_memory({k: v for k, v in CV2.items() if k != "head_dim"}, CV2_PADDED_VOCAB, 1, 64, GIB)
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        plan(max_batch=0)
    with pytest.raises(ValueError, match="max_session_len must be >= 1, got 0"):
        plan(max_session_len=0)
    with pytest.raises(ValueError, match="padded_vocab must be >= 1, got 0"):
        _core.plan_gpu_memory(CV2, 0, 1, 64, 80 * GIB)
    # Sizes past 64 bits are refused, not wrapped around into a small plan.
    huge = dict(CV2, num_hidden_layers=1 << 30, intermediate_size=1 << 30)
    with pytest.raises(ValueError, match="does not fit in 64-bit byte counts"):
        _core.plan_gpu_memory(huge, CV2_PADDED_VOCAB, 1 << 30, 1 << 30, 80 * GIB)


def test_the_cache_share_is_the_plans_cache_over_what_is_free_after_the_weights():
    p = plan(gpu_memory=20)
    cache = p["budget_bytes"] - p["weights_bytes"] - p["workspace_bytes"]
    free = 79 * GIB
    share = _core.cache_max_entry_count(p, free)
    assert share == cache / (free - p["weights_bytes"] - p["workspace_bytes"])
    assert 0 < share < 1
    # The share TurboMind is given turns back into the plan's cache (to the byte, give or take rounding).
    assert abs(share * (free - p["weights_bytes"] - p["workspace_bytes"]) - cache) < 1
    # Just enough free memory: a share just under 1.
    just = p["weights_bytes"] + p["workspace_bytes"] + cache + 1
    assert _core.cache_max_entry_count(p, just) == cache / (cache + 1)


@pytest.mark.parametrize("free_gb", [0, 1, 15, 20])
def test_too_little_free_memory_for_the_budget_is_refused(free_gb):
    # Free memory up to the budget leaves the cache all of what is free then, or less: refused.
    p = plan(gpu_memory=20)
    with pytest.raises(ValueError, match=f"^the GPU has {free_gb}\\.00 GB free, too little for a budget of "
                                         r"20\.00 GB$"):
        _core.cache_max_entry_count(p, free_gb * GIB)


def test_a_plan_dict_needs_its_fields():
    p = plan()
    del p["kv_bytes"]
    with pytest.raises(ValueError, match="plan is missing 'kv_bytes'"):
        _core.cache_max_entry_count(p, 80 * GIB)


def test_the_engine_setup_refuses_a_gpu_with_too_little_free(monkeypatch, tiny_cv2_dir):
    from cosyfast.checkpoint import load_checkpoint

    monkeypatch.setattr(turbomind, "check_turbomind", lambda *args, **kwargs: None)
    monkeypatch.setattr(turbomind, "_device_memory", lambda device: (2 * GIB, 80 * GIB))
    w = load_checkpoint(tiny_cv2_dir)
    with pytest.raises(ValueError, match=r"^the GPU has 2\.00 GB free, too little for a budget of 4\.00 GB$"):
        turbomind.make_turbomind_engine(w, max_batch=8, max_session_len=1024, gpu_memory=4)


def test_a_numpy_float_is_a_float():
    assert plan(gpu_memory=np.float64(20))["budget_bytes"] == 20 * GIB
