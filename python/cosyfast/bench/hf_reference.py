"""CosyVoice's Qwen2LM/CosyVoice3LM loop on HF transformers, built straight from llm.pt's state
dict (not through cosyfast's checkpoint reader): the independent reference the GPU tests and the
greedy-divergence study hold the engine against. float32 by default; bfloat16 runs the
transformer and the decoder in bf16 (as CosyVoice does in bf16) and adds the bias in float32."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class HfCosyVoice:
    def __init__(self, model_dir: Path, dtype: Any = None, device: str = "cuda"):
        import torch
        from transformers import Qwen2Config, Qwen2Model

        self.torch = torch
        self.dtype = dtype or torch.float32
        self.device = device
        sd = torch.load(Path(model_dir) / "llm.pt", map_location="cpu", weights_only=True)
        cfg = json.loads((Path(model_dir) / "CosyVoice-BlankEN" / "config.json").read_text())
        qcfg = Qwen2Config(**{k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "num_key_value_heads", "intermediate_size", "rms_norm_eps",
                                                  "rope_theta", "vocab_size")})
        qcfg._attn_implementation = "eager"
        self.qwen = Qwen2Model(qcfg)
        prefix = "llm.model.model."
        self.qwen.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
        self.qwen = self.qwen.to(device=device, dtype=self.dtype).eval()
        self.speech = sd["speech_embedding.weight"].to(device, self.dtype)
        self.dec_w = sd["llm_decoder.weight"].to(device, self.dtype)
        self.dec_b = sd["llm_decoder.bias"].float().to(device) if "llm_decoder.bias" in sd else None
        self.cv3 = "llm_embedding.weight" not in sd
        if self.cv3:
            self.sos, self.task = self.speech[6561], self.speech[6563]
            self.stop = list(range(6561, 6761))
        else:
            emb = sd["llm_embedding.weight"].to(device, self.dtype)
            self.sos, self.task = emb[0], emb[1]
            self.stop = [6561, 6562, 6563]

    def prompt(self, text, prompt_text, prompt_speech) -> Any:
        torch = self.torch
        ids = torch.tensor(list(prompt_text) + list(text), device=self.device)
        with torch.no_grad():
            return torch.cat([self.sos[None], self.qwen.embed_tokens(ids), self.task[None],
                              self.speech[torch.tensor(prompt_speech, device=self.device, dtype=torch.long)]], 0)

    def logits(self, h: Any) -> Any:
        """float32 logits; with the bias: what cosyfast samples from."""
        out = self.torch.nn.functional.linear(h, self.dec_w).float()
        return out if self.dec_b is None else out + self.dec_b

    def teacher_forced(self, rows: Any, tokens: list[int]) -> list[Any]:
        with self.torch.inference_mode():
            out = self.qwen(inputs_embeds=rows[None], use_cache=True)
            res = [self.logits(out.last_hidden_state[0, -1])]
            for t in tokens:
                out = self.qwen(inputs_embeds=self.speech[t].view(1, 1, -1), past_key_values=out.past_key_values,
                                use_cache=True)
                res.append(self.logits(out.last_hidden_state[0, -1]))
        return res

    def greedy(self, rows: Any, n: int, with_margins: bool = False) -> Any:
        """min_len = max_len = n: every stop id masked, argmax each step. with_margins: also the
        top-1 minus top-2 log-probability (nats) at each step."""
        toks: list[int] = []
        margins: list[float] = []
        with self.torch.inference_mode():
            out = self.qwen(inputs_embeds=rows[None], use_cache=True)
            for _ in range(n):
                logp = self.logits(out.last_hidden_state[0, -1]).log_softmax(-1)
                logp[self.stop] = -float("inf")
                top = logp.topk(2)
                toks.append(int(top.indices[0]))
                margins.append(float(top.values[0] - top.values[1]))
                out = self.qwen(inputs_embeds=self.speech[toks[-1]].view(1, 1, -1),
                                past_key_values=out.past_key_values, use_cache=True)
        return (toks, margins) if with_margins else toks
