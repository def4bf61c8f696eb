"""Speed of the CPU reference engine (CpuQwen2Engine) with random weights.

Reports the prefill time and ms per step for batch 1 (and optionally a larger batch), after
warm-up steps that are not counted. The full shape is CosyVoice2's backbone (24 x 896, 14 heads,
2 KV heads, FFN 4864) with the padded speech vocabulary 6592; it needs about 3 GB of memory
(the weights once in numpy, once in the engine).

    python benchmarks/cpu_engine_speed.py --shape full
    python benchmarks/cpu_engine_speed.py --shape tiny --batch 4
"""

import argparse
import time

import numpy as np

from cosyfast._core import CpuQwen2Engine

SHAPES = {
    "full": dict(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864, vocab=6592),
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=100),
}


def random_engine(shape, seed=0):
    gen = np.random.default_rng(seed)

    def tensor(*dims, std=0.02):
        return gen.standard_normal(dims, dtype=np.float32) * np.float32(std)

    hidden, ffn = shape["hidden"], shape["ffn"]
    head_dim = hidden // shape["heads"]
    q_width, kv_width = shape["heads"] * head_dim, shape["kv_heads"] * head_dim
    config = dict(
        num_hidden_layers=shape["layers"],
        hidden_size=hidden,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        intermediate_size=ffn,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
    )
    layers = [
        {
            "self_attn.q_proj.weight": tensor(q_width, hidden),
            "self_attn.q_proj.bias": tensor(q_width),
            "self_attn.k_proj.weight": tensor(kv_width, hidden),
            "self_attn.k_proj.bias": tensor(kv_width),
            "self_attn.v_proj.weight": tensor(kv_width, hidden),
            "self_attn.v_proj.bias": tensor(kv_width),
            "self_attn.o_proj.weight": tensor(hidden, q_width),
            "mlp.gate_proj.weight": tensor(ffn, hidden),
            "mlp.up_proj.weight": tensor(ffn, hidden),
            "mlp.down_proj.weight": tensor(hidden, ffn),
            "input_layernorm.weight": np.ones(hidden, np.float32),
            "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        }
        for _ in range(shape["layers"])
    ]
    vocab = shape["vocab"]
    return CpuQwen2Engine(
        config,
        tensor(vocab, hidden, std=1.0),
        tensor(vocab, hidden),
        layers,
        np.ones(hidden, np.float32),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="full")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="sessions stepped together")
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    t0 = time.perf_counter()
    engine = random_engine(shape)
    print(f"{args.shape}: {engine!r} built in {time.perf_counter() - t0:.1f} s")

    rows = np.random.default_rng(1).standard_normal((args.prompt_len, shape["hidden"]), np.float32)
    sessions = list(range(args.batch))
    t0 = time.perf_counter()
    logits = engine.forward([(sid, rows, None) for sid in sessions])
    prefill_s = time.perf_counter() - t0
    print(f"prefill: {args.batch} x {args.prompt_len} rows in {prefill_s * 1e3:.1f} ms")

    tokens = logits.argmax(axis=1)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        logits = engine.forward([(sid, None, int(tok)) for sid, tok in zip(sessions, tokens)])
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        tokens = logits.argmax(axis=1)
    ms = np.array(times) * 1e3
    print(
        f"step, batch {args.batch}: p50 {np.percentile(ms, 50):.2f} ms/round, "
        f"p90 {np.percentile(ms, 90):.2f} ms/round, "
        f"{args.batch * 1e3 / np.median(ms):.1f} tokens/s"
    )


if __name__ == "__main__":
    main()
