"""The three measured paths. Each runs `concurrency` identical-shape requests of the same workload
and returns the arrival times of every token; warm-up runs happen in the caller, untimed."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from .. import _core
from ..checkpoint import LlmWeights
from ..model import Model
from .workload import Request, Workload, prompt_rows


@contextmanager
def arrivals_recorded() -> Iterator[None]:
    """Requests started inside record each token's arrival time (off elsewhere: the per-token
    path reads no clock)."""
    _core._record_arrivals(True)
    try:
        yield
    finally:
        _core._record_arrivals(False)


def run_cosyfast(model: Model, work: Workload, requests: list[Request], **sampling: object) -> tuple[float, list[list[float]]]:
    """Every request started at once; the C++ core records each token's arrival."""
    t0 = time.perf_counter()
    with arrivals_recorded():
        streams = [model.stream(r.text_ids, r.prompt_text_ids, r.prompt_speech_tokens, seed=r.seed,
                                **work.length_options(), **sampling) for r in requests]
    for s in streams:
        s.drain()
    wall = time.perf_counter() - t0
    return wall, [list(s.arrival_seconds) for s in streams]


def run_turbomind_native(model: Model, work: Workload, requests: list[Request]) -> tuple[float, list[list[float]]]:
    """TurboMind's own generation loop and its own sampler on the same engine (the ceiling):
    top_k 25 / top_p 0.8, no RAS, no bias, no min_len masking, no stops, every request to
    work.new_tokens tokens. Started through Model._start, the code Model.stream runs (the same
    replica pick, id checks and options), and driven from C++ exactly as cosyfast's requests are:
    only the sampler differs. (Until session 9 it called the generators directly, skipping the
    Python that Model.stream runs per request; with 64 and 128 requests started one after another
    that may be the 1-2 ms lead its first token had.)"""
    from ..model import request_options

    t0 = time.perf_counter()
    streams = []
    with arrivals_recorded():
        for r in requests:
            options = request_options(seed=r.seed, top_k=25, top_p=0.8, ras=False, **work.length_options())
            streams.append(model._start(r.text_ids, r.prompt_text_ids, r.prompt_speech_tokens, options, native=True))
    for s in streams:
        s.drain()
    wall = time.perf_counter() - t0
    return wall, [list(s.arrival_seconds) for s in streams]


def _ras(logp, decoded: list[int], generator, top_p=0.8, top_k=25, win_size=10, tau_r=0.1):
    """CosyVoice's ras_sampling in torch, as its PyTorch loop runs it (the baseline's sampler)."""
    import torch

    probs = logp.softmax(dim=0)
    sorted_p, sorted_i = probs.sort(descending=True, stable=True)
    cum = torch.cumsum(sorted_p, 0) - sorted_p
    keep = int(((cum < top_p) & (torch.arange(len(sorted_p), device=logp.device) < top_k)).sum())
    pick = sorted_i[torch.multinomial(sorted_p[:keep], 1, generator=generator)].item()
    if decoded[-win_size:].count(pick) >= win_size * tau_r:
        logp = logp.clone()
        logp[pick] = -float("inf")
        pick = torch.multinomial(logp.softmax(dim=0), 1, generator=generator).item()
    return pick


def run_hf(weights: LlmWeights, work: Workload, request: Request, device: str = "cuda") -> tuple[float, list[list[float]]]:
    """CosyVoice's way: transformers Qwen2 with a KV cache, batch 1, decoder + log_softmax + RAS in
    PyTorch per token (bf16 on the GPU)."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    c = weights.config
    cfg = Qwen2Config(hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
                      num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                      intermediate_size=c["intermediate_size"], rms_norm_eps=c["rms_norm_eps"],
                      rope_theta=c["rope_theta"], vocab_size=1, max_position_embeddings=32768)
    dtype = torch.bfloat16
    model = Qwen2Model(cfg).to(dtype)
    state = {"norm.weight": torch.from_numpy(weights.norm), "embed_tokens.weight": torch.zeros(1, c["hidden_size"])}
    for i, layer in enumerate(weights.layers):
        state.update({f"layers.{i}.{k}": torch.from_numpy(v) for k, v in layer.items()})
    model.load_state_dict(state, strict=False)
    model = model.to(device).eval()
    dec_w = torch.from_numpy(weights.decoder_weight).to(device, dtype)
    dec_b = torch.from_numpy(weights.decoder_bias).to(device, dtype) if weights.decoder_bias is not None else None
    speech = torch.from_numpy(weights.speech_embedding).to(device, dtype)
    rows = torch.from_numpy(prompt_rows(weights, request)).to(device, dtype)[None]
    gen = torch.Generator(device=device).manual_seed(request.seed)
    times: list[float] = []
    decoded: list[int] = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(inputs_embeds=rows, use_cache=True)
        for _ in range(work.new_tokens):
            h = out.last_hidden_state[0, -1]
            logits = torch.nn.functional.linear(h, dec_w, dec_b).float()
            logp = logits.log_softmax(dim=-1)
            for stop in weights.vocab["stop_ids"]:
                logp[stop] = -float("inf")  # min_len = new_tokens: every step ignores eos
            token = _ras(logp, decoded, gen)
            decoded.append(token)
            times.append(time.perf_counter() - t0)
            out = model(inputs_embeds=speech[token].view(1, 1, -1), past_key_values=out.past_key_values,
                        use_cache=True)
        wall = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return wall, [times]


__all__ = ["arrivals_recorded", "run_cosyfast", "run_hf", "run_turbomind_native"]
