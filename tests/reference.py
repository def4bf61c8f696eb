"""Plain-Python references for cosyfast's behaviour, written from ../shared/COSYVOICE_LLM.md.

Nothing here imports cosyfast: these are the independent definitions the tests compare it with.

* Samplers (numpy, float64) that mirror CosyVoice's ``cosyvoice/utils/common.py`` step by step:
  ``nucleus_sampling``, ``random_sampling``, ``ras_sampling``.
* Exact distributions of those samplers: ``nucleus_support``, ``nucleus_distribution``,
  ``random_distribution``, ``ras_distribution`` (for expected counts in statistical tests).
* ``cosyvoice_inference``: CosyVoice2 ``Qwen2LM.inference`` / CosyVoice3 ``CosyVoice3LM.inference``
  re-implemented on Hugging Face transformers (eager attention, float32, KV cache), with a
  pluggable sampler (``greedy_sampler``, ``RasSampler``).

Notes on where this deviates from (or pins down) upstream:
* ignore_eos (step < min_len) masks every stop id (CV2: 6561-6563, CV3: 6561-6760), cosyfast's
  documented choice; upstream masks index 6561 only (CV3: that is its sos, not its eos).
* Under ``exclude_repeated`` a re-draw whose only finite score was the repeated token would make
  upstream fail (softmax of all -inf); here, as in cosyfast, the nucleus token is kept.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

SPEECH_TOKEN_SIZE = 6561
TEXT_VOCAB = 151936
END_OF_PROMPT = 151646  # <|endofprompt|>, required in CosyVoice3 text


# ----------------------------------------------------------------------------------------------
# Sampling (cosyvoice/utils/common.py), float64
# ----------------------------------------------------------------------------------------------

def softmax(scores) -> np.ndarray:
    """softmax over raw scores in float64; -inf scores get probability 0."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.max(s)
    if not np.isfinite(m):
        raise ValueError("every score is -inf or NaN: nothing can be sampled")
    e = np.exp(s - m)
    return e / e.sum()


def _nucleus_kept(probs: np.ndarray, top_p: float, top_k: int):
    """Upstream's loop: stable descending sort, take while cum-before < top_p and count < top_k."""
    order = np.argsort(-probs, kind="stable")  # stable: ties keep the lower index first
    ids, kept = [], []
    cum = 0.0
    for i in order:
        if cum < top_p and len(kept) < top_k:
            cum += probs[i]
            kept.append(probs[i])
            ids.append(int(i))
        else:
            break
    return np.asarray(ids, dtype=np.int64), np.asarray(kept, dtype=np.float64)


def nucleus_support(scores, top_p: float, top_k: int):
    """(ids, probs): the tokens nucleus sampling can return and their probabilities (sum 1).

    Tokens kept by the loop with probability 0 (a -inf score) are dropped: they are never drawn.
    """
    ids, kept = _nucleus_kept(softmax(scores), top_p, top_k)
    nz = kept > 0
    ids, kept = ids[nz], kept[nz]
    return ids, kept / kept.sum()


def nucleus_sampling(scores, top_p: float, top_k: int, rng: np.random.Generator) -> int:
    ids, kept = _nucleus_kept(softmax(scores), top_p, top_k)
    # torch's prob.multinomial(1): draw in proportion to the kept probabilities.
    return int(ids[rng.choice(len(ids), p=kept / kept.sum())])


def random_sampling(scores, rng: np.random.Generator) -> int:
    p = softmax(scores)
    return int(rng.choice(len(p), p=p))


def _window(decoded: Sequence[int], win_size: int) -> list:
    return list(decoded)[-win_size:] if win_size > 0 else []


def ras_sampling(scores, decoded: Sequence[int], top_p: float, top_k: int, win_size: int,
                 tau_r: float, exclude_repeated: bool, rng: np.random.Generator) -> int:
    """CosyVoice's ras_sampling. ``decoded``: the speech tokens generated so far (no prompt)."""
    scores = np.array(scores, dtype=np.float64)  # a copy: the caller's scores are untouched
    token = nucleus_sampling(scores, top_p, top_k, rng)
    rep = sum(1 for t in _window(decoded, win_size) if t == token)
    if rep >= win_size * tau_r:
        if exclude_repeated:
            scores[token] = -np.inf
            if not np.any(np.isfinite(scores)):
                return token  # nothing else can be drawn (upstream would fail here)
        token = random_sampling(scores, rng)
    return token


def random_distribution(scores) -> np.ndarray:
    return softmax(scores)


def nucleus_distribution(scores, top_p: float, top_k: int) -> np.ndarray:
    ids, probs = nucleus_support(scores, top_p, top_k)
    out = np.zeros(len(np.asarray(scores)), dtype=np.float64)
    out[ids] = probs
    return out


def ras_distribution(scores, decoded: Sequence[int], top_p: float, top_k: int, win_size: int,
                     tau_r: float, exclude_repeated: bool) -> np.ndarray:
    """Exact probability of every token under ras_sampling.

    P(t) = P(nucleus picks t and t is not repeated) + sum over repeated picks r of
           P(nucleus picks r) * P(re-draw gives t | r).
    """
    s = np.asarray(scores, dtype=np.float64)
    full = softmax(s)
    ids, probs = nucleus_support(s, top_p, top_k)
    window = _window(decoded, win_size)
    out = np.zeros(len(s), dtype=np.float64)
    for t, q in zip(ids, probs):
        rep = window.count(int(t))
        if rep < win_size * tau_r:
            out[t] += q
        elif not exclude_repeated:
            out += q * full
        else:
            rest = s.copy()
            rest[t] = -np.inf
            if np.any(np.isfinite(rest)):
                out += q * softmax(rest)
            else:
                out[t] += q
    return out


# ----------------------------------------------------------------------------------------------
# Samplers for the decode loop: sampler(scores: np.ndarray[float64], decoded: list[int]) -> int
# ----------------------------------------------------------------------------------------------

def greedy_sampler(scores: np.ndarray, decoded: Sequence[int]) -> int:
    """argmax; the lowest index wins a tie (what top_k=1 with a stable sort picks)."""
    return int(np.argmax(scores))


@dataclass
class RasSampler:
    rng: np.random.Generator
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    exclude_repeated: bool = True

    def __call__(self, scores: np.ndarray, decoded: Sequence[int]) -> int:
        return ras_sampling(scores, decoded, self.top_p, self.top_k, self.win_size, self.tau_r,
                            self.exclude_repeated, self.rng)


# ----------------------------------------------------------------------------------------------
# The LLM decode loop on Hugging Face transformers
# ----------------------------------------------------------------------------------------------

@dataclass
class SpeechVocabRef:
    kind: str               # "cosyvoice2" or "cosyvoice3"
    decoder_rows: int       # 6564 / 6761
    stop_ids: tuple         # CV2: 6561..6563; CV3: 6561..6760


def speech_vocab(kind: str) -> SpeechVocabRef:
    if kind == "cosyvoice2":
        return SpeechVocabRef(kind, 6564, tuple(range(6561, 6564)))
    if kind == "cosyvoice3":
        return SpeechVocabRef(kind, 6761, tuple(range(6561, 6761)))
    raise ValueError(f"unknown model kind {kind!r}")


def resolve_model_paths(path: str):
    """(llm.pt, CosyVoice-BlankEN/config.json) from a model directory or an llm.pt path."""
    if os.path.isdir(path):
        llm_pt = os.path.join(path, "llm.pt")
        root = path
    else:
        llm_pt = path
        root = os.path.dirname(os.path.abspath(path))
    return llm_pt, os.path.join(root, "CosyVoice-BlankEN", "config.json")


class ReferenceLM:
    """CosyVoice's LLM (Qwen2LM for CV2, CosyVoice3LM for CV3) on HF Qwen2, float32, eager."""

    def __init__(self, llm_pt_path: str, config_json_path: str):
        import torch
        from transformers import Qwen2Config, Qwen2Model

        self.torch = torch
        state = torch.load(llm_pt_path, map_location="cpu", weights_only=True)
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k: v.float() for k, v in state.items()}

        # The layout tells the model: CV2 has llm_embedding (sos, task_id) and a decoder bias.
        self.kind = "cosyvoice2" if "llm_embedding.weight" in state else "cosyvoice3"
        self.vocab = speech_vocab(self.kind)

        with open(config_json_path) as f:
            cfg = json.load(f)
        cfg.pop("torch_dtype", None)
        cfg.pop("dtype", None)
        config = Qwen2Config(**cfg)
        config._attn_implementation = "eager"
        self.config = config
        torch.manual_seed(0)
        model = Qwen2Model(config)
        prefix = "llm.model.model."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        model.load_state_dict(sub, strict=True)
        self.model = model.float().eval()

        hidden = config.hidden_size
        speech_w = state["speech_embedding.weight"]
        dec_w = state["llm_decoder.weight"]
        dec_b = state.get("llm_decoder.bias")
        assert speech_w.shape == (self.vocab.decoder_rows, hidden), speech_w.shape
        assert dec_w.shape == (self.vocab.decoder_rows, hidden), dec_w.shape
        if self.kind == "cosyvoice2":
            assert dec_b is not None, "CosyVoice2's llm_decoder has a bias"
        self.speech_embedding = torch.nn.Embedding(speech_w.shape[0], hidden)
        self.speech_embedding.weight.data.copy_(speech_w)
        self.llm_decoder = torch.nn.Linear(hidden, dec_w.shape[0], bias=dec_b is not None)
        self.llm_decoder.weight.data.copy_(dec_w)
        if dec_b is not None:
            self.llm_decoder.bias.data.copy_(dec_b)
        if self.kind == "cosyvoice2":
            llm_emb = state["llm_embedding.weight"]
            self.sos_emb = llm_emb[0]
            self.task_id_emb = llm_emb[1]
        else:
            self.sos_emb = speech_w[6561]
            self.task_id_emb = speech_w[6563]

    def prompt_embeddings(self, text_ids, prompt_text_ids=(), prompt_speech_tokens=()):
        torch = self.torch
        ids = torch.tensor(list(prompt_text_ids) + list(text_ids), dtype=torch.long)
        with torch.no_grad():
            text = self.model.embed_tokens(ids)
            rows = [self.sos_emb[None], text, self.task_id_emb[None]]
            if len(prompt_speech_tokens):
                rows.append(self.speech_embedding(torch.tensor(list(prompt_speech_tokens), dtype=torch.long)))
            return torch.cat(rows, dim=0)[None]  # [1, T, hidden]

    def step_logp(self, embeds, cache):
        """One forward (prefill or one token) -> (log_softmax(llm_decoder(h_last)), cache)."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
            h = out.last_hidden_state[:, -1]  # after the final norm (= hidden_states[-1])
            logp = self.llm_decoder(h).log_softmax(dim=-1)[0]
        return logp, out.past_key_values

    def step_logp_nocache(self, embeds):
        """The same without a KV cache: the whole sequence recomputed (a cross-check)."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(inputs_embeds=embeds, use_cache=False)
            return self.llm_decoder(out.last_hidden_state[:, -1]).log_softmax(dim=-1)[0]

    def inference(self, text_ids, prompt_text_ids=(), prompt_speech_tokens=(),
                  sampler: Callable = greedy_sampler, min_token_text_ratio=2.0,
                  max_token_text_ratio=20.0, min_len=None, max_len=None, use_cache=True,
                  return_scores=False):
        """Upstream's inference + inference_wrapper. Returns the emitted speech tokens.

        With ``return_scores`` also returns the masked float64 scores each token was drawn from.
        """
        torch = self.torch
        text_len = len(text_ids)  # the text without the prompt text
        if min_len is None:
            min_len = int(text_len * min_token_text_ratio)
        if max_len is None:
            max_len = int(text_len * max_token_text_ratio)
        lm_input = self.prompt_embeddings(text_ids, prompt_text_ids, prompt_speech_tokens)
        seq = lm_input
        out_tokens, all_scores = [], []
        cache = None
        stop = set(self.vocab.stop_ids)
        for i in range(max_len):
            if use_cache:
                logp, cache = self.step_logp(lm_input, cache)
            else:
                logp = self.step_logp_nocache(seq)
            scores = logp.double().numpy().copy()
            if i < min_len:  # ignore_eos
                scores[list(self.vocab.stop_ids)] = -np.inf
            if return_scores:
                all_scores.append(scores.copy())
            token = int(sampler(scores, list(out_tokens)))
            if token in stop:
                break
            out_tokens.append(token)
            lm_input = self.speech_embedding.weight[token].reshape(1, 1, -1).detach()
            seq = torch.cat([seq, lm_input], dim=1)
        if return_scores:
            return out_tokens, all_scores
        return out_tokens


def cosyvoice_inference(llm_pt_path, config_json_path, text_ids, prompt_text_ids=(),
                        prompt_speech_tokens=(), sampler: Callable = greedy_sampler, **kwargs):
    """CosyVoice's LLM inference (CV2 or CV3, told apart by the checkpoint) -> speech tokens.

    kwargs: min_token_text_ratio, max_token_text_ratio, min_len, max_len, use_cache.
    """
    lm = ReferenceLM(llm_pt_path, config_json_path)
    return lm.inference(text_ids, prompt_text_ids, prompt_speech_tokens, sampler, **kwargs)
