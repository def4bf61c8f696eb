"""Upstream CosyVoice2Model / CosyVoice3Model built from upstream's own classes and yaml configs,
with random weights, from the offline pack that benchmarks/e2e/make_pack.sh makes.

What is upstream's, unchanged: the model holder (cosyvoice/cli/model.py: tts(), llm_job,
token2wav), the LLM (Qwen2LM / CosyVoice3LM), the flow and HiFT modules, and the yaml configs'
llm/flow/hift sections, instantiated by hyperpyyaml as CosyVoice2()/CosyVoice3() do.

What is not run, and how it is bypassed (the only departures):
- The frontend (text normalisation, the Qwen tokenizer, the ONNX speech tokenizer and speaker
  model, whisper's mel): never imported; its outputs are given directly (`Request`).
- The yaml sections after `hift` (the GAN discriminator, the dataset processors, the tokenizer
  factory): cut off before loading, since loading them imports training-only packages.
- `matcha.utils`'s package __init__ (hydra/rich/lightning training helpers): registered as an
  empty package so that `matcha.utils.pylogger` (what the flow imports) loads without it.
- `Qwen2ForCausalLM.from_pretrained(pretrain_path)`: built from the directory's config.json with
  random weights instead of reading a safetensors file; `llm.pt`'s weights are then loaded with
  strict=True over every parameter, as CosyVoice2Model.load does, so nothing differs after.
- transformers: upstream's pin, 4.51.3, from the pack (the GPU image has 5.x, under which
  Qwen2Encoder.forward_one_step's one-column attention mask changes what each step attends to:
  upstream's greedy tokens part from its own model's at the second token).
- The weights: cosyfast.synthetic's random LLM (llm.pt with the real keys); flow and HiFT keep
  their seeded PyTorch initialisation (no flow.pt/hift.pt exists without a download).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PACK = REPO / ".e2epack"
SAMPLE_RATE = 24000
SPEECH_TOKEN_SIZE = 6561
END_OF_PROMPT = 151646
YAML = {"cosyvoice2": "cosyvoice2.yaml", "cosyvoice3": "cosyvoice3.yaml"}

# Small flow/HiFT sizes for the CPU dry run (the LLM's size comes from the synthetic model).
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "cosyvoice2": {
        # the encoder stays 512 wide: its lookahead and upsampling layers are built 512 wide
        "flow": {"encoder": {"attention_heads": 2, "linear_units": 256, "num_blocks": 1},
                 "decoder": {"estimator": {"channels": [32], "attention_head_dim": 16, "n_blocks": 1,
                                           "num_mid_blocks": 1, "num_heads": 2}}},
        "hift": {"base_channels": 32, "f0_predictor": {"cond_channels": 32}},
    },
    "cosyvoice3": {
        "flow": {"pre_lookahead_layer": {"channels": 64},
                 "decoder": {"estimator": {"dim": 64, "depth": 1, "heads": 2, "dim_head": 32}}},
        "hift": {"base_channels": 32, "f0_predictor": {"cond_channels": 32}},
    },
}


def pack_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The pack: `path`, else $COSYFAST_E2E_PACK, else .e2epack/ in the repo root."""
    return Path(path or os.environ.get("COSYFAST_E2E_PACK") or DEFAULT_PACK)


def upstream_commits(pack: Path) -> dict[str, str]:
    lines = (pack / "src" / "UPSTREAM").read_text().split("\n")
    return dict(line.split(" ", 1) for line in lines if line.strip())


def activate(pack: Path) -> None:
    """Puts the pack's wheels (installed once into a folder under $TMPDIR) first on sys.path, then
    upstream's source, and registers matcha.utils without its training-only __init__. Call it
    before anything imports transformers: the pack's transformers (upstream's pin) must win."""
    if not (pack / "src" / "cosyvoice").is_dir():
        raise FileNotFoundError(f"no upstream source in {pack}/src: run benchmarks/e2e/make_pack.sh")
    wheels = sorted((pack / "whl").glob("*.whl"))
    if wheels:
        tag = hashlib.sha256("\n".join(w.name for w in wheels).encode()).hexdigest()[:10]
        site = Path(os.environ.get("TMPDIR", "/tmp")) / f"cosyfast-e2e-site-{tag}"
        if not (site / ".done").exists():
            tmp = site.with_name(site.name + f".tmp{os.getpid()}")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                            "--no-compile", "--target", str(tmp), *map(str, wheels)], check=True)
            (tmp / ".done").touch()
            try:
                tmp.rename(site)
            except OSError:  # another process got there first
                shutil.rmtree(tmp, ignore_errors=True)
        if str(site) not in sys.path:
            sys.path.insert(0, str(site))
        pinned = next((w.name.split("-")[1] for w in wheels if w.name.startswith("transformers-")), None)
        loaded = sys.modules.get("transformers")
        if pinned and loaded is not None and getattr(loaded, "__version__", None) != pinned:
            raise RuntimeError(f"transformers {loaded.__version__} was imported before the pack's {pinned}: "
                               "activate the pack first")
    src = str(pack / "src")
    if src not in sys.path:
        sys.path.insert(1 if wheels else 0, src)
    if "matcha.utils" not in sys.modules:
        importlib.import_module("matcha")
        utils = types.ModuleType("matcha.utils")
        utils.__path__ = [str(pack / "src" / "matcha" / "utils")]
        sys.modules["matcha.utils"] = utils


def _random_qwen(config_dir: str) -> Any:
    """Qwen2ForCausalLM from config.json with random weights (llm.pt replaces all of them)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config.from_pretrained(config_dir))


def _yaml_sections(text: str) -> str:
    """The config up to and including `hift` (its model sections)."""
    cut = text.find("\n# gan related module")
    if cut < 0:
        raise ValueError("the yaml has no '# gan related module' line: not the layout this loader knows")
    return text[:cut + 1]


def build_configs(pack: Path, kind: str, model_dir: Path, small: bool) -> dict[str, Any]:
    """hyperpyyaml-instantiated llm, flow and hift, as CosyVoice2()/CosyVoice3() load them."""
    from hyperpyyaml import load_hyperpyyaml

    llm_module = importlib.import_module("cosyvoice.llm.llm")
    hidden = int(__import__("json").loads((model_dir / "CosyVoice-BlankEN" / "config.json").read_text())["hidden_size"])
    overrides: dict[str, Any] = {"qwen_pretrain_path": str(model_dir / "CosyVoice-BlankEN"),
                                 "llm_input_size": hidden, "llm_output_size": hidden}
    if small:
        overrides.update(SMALL_OVERRIDES[kind])
    text = _yaml_sections((pack / "src" / "conf" / YAML[kind]).read_text())
    saved = llm_module.Qwen2ForCausalLM
    llm_module.Qwen2ForCausalLM = types.SimpleNamespace(from_pretrained=_random_qwen)
    try:
        return load_hyperpyyaml(text, overrides=overrides)
    finally:
        llm_module.Qwen2ForCausalLM = saved


def suppress_stops(llm: torch.nn.Module) -> None:
    """Random weights would draw a stop id after min_len at random steps; zeroing the stop ids'
    decoder rows (CV2: and a -30 bias) makes every request run to max_len, so upstream and
    cosyfast give the same number of tokens. With the decoder's logit std of 4, a zero logit is
    never in the nucleus and ~1e-5 of a RAS re-draw's mass (CV3's 200 stop ids)."""
    with torch.no_grad():
        stops = list(llm.stop_token_ids)
        llm.llm_decoder.weight[stops] = 0
        if llm.llm_decoder.bias is not None:
            llm.llm_decoder.bias[stops] = -30.0


class PerRequestHop:
    """Upstream's CosyVoice2Model.tts grows `self.token_hop_len` (25 -> 50 -> 100) on the model
    object, so every later request, in any thread, starts with the grown hop: its first chunk waits
    for 100 tokens instead of 25. This keeps the hop per thread (each tts() consumer runs in its
    own thread), which is what the code intends; `shared` keeps upstream's behaviour."""

    def __init__(self, model: Any) -> None:
        self.start = model.token_hop_len
        self.local = threading.local()
        base = type(model)
        local, start = self.local, self.start
        hop = property(lambda self: getattr(local, "hop", start), lambda self, v: setattr(local, "hop", v))
        model.__class__ = type(base.__name__, (base,), {"token_hop_len": hop, "__module__": base.__module__})

    def reset(self) -> None:
        self.local.hop = self.start


@dataclass
class Built:
    kind: str
    model: Any                  # upstream's CosyVoice2Model / CosyVoice3Model
    model_dir: Path             # the synthetic llm.pt + CosyVoice-BlankEN/config.json
    fp16: bool
    device: str


def build(kind: str, *, pack: Path | None = None, size: str = "full", small_flow: bool | None = None,
          fp16: bool = True, seed: int = 0, decoder_scale: float = 4.0,
          cache: str | os.PathLike[str] | None = None) -> Built:
    """Upstream's model holder of `kind` with the synthetic LLM of `size` ("full": Qwen2-0.5B's
    shape; "tiny"), flow/HiFT at the yaml's sizes (small_flow: the CPU dry run's; default: small
    when size is tiny), on the GPU if there is one, fp16 as upstream's fp16=True (autocast)."""
    pack = pack_dir(pack)
    activate(pack)
    from cosyvoice.cli.model import CosyVoice2Model, CosyVoice3Model

    from cosyfast.synthetic import write_model_dir

    root = Path(cache or os.environ.get("COSYFAST_CACHE", Path.home() / ".cache" / "cosyfast")) / "e2e"
    model_dir = write_model_dir(root / f"{kind}-{size}-s{seed}-d{decoder_scale:g}", kind=kind, size=size, seed=seed,
                                decoder_scale=decoder_scale, progress=False)
    torch.manual_seed(seed)
    configs = build_configs(pack, kind, model_dir, small=(size == "tiny") if small_flow is None else small_flow)
    holder = CosyVoice2Model if kind == "cosyvoice2" else CosyVoice3Model
    if torch.cuda.is_available() is False:
        fp16 = False  # what CosyVoice2()/CosyVoice3() do without CUDA
    model = holder(configs["llm"], configs["flow"], configs["hift"], fp16)
    # CosyVoice2Model.load, with llm.pt only (flow and hift keep their initialisation)
    state = torch.load(model_dir / "llm.pt", map_location="cpu", weights_only=True)
    model.llm.load_state_dict(state, strict=True)
    suppress_stops(model.llm)
    for module in (model.llm, model.flow, model.hift):
        module.to(model.device).eval()
    return Built(kind, model, model_dir, fp16, str(model.device))


@dataclass(frozen=True)
class Request:
    """The frontend's outputs for one zero-shot request (frontend_zero_shot's dict, as tensors)."""

    text: torch.Tensor            # [1, T] int32
    prompt_text: torch.Tensor     # [1, P] int32
    speech_token: torch.Tensor    # [1, S] int32 (llm and flow prompt)
    speech_feat: torch.Tensor     # [1, 2S, 80] float32 (the prompt's mel)
    embedding: torch.Tensor       # [1, 192] float32 (speaker)

    def tts_kwargs(self) -> dict[str, Any]:
        """model.tts()'s keywords, as CosyVoice2.inference_zero_shot passes frontend_zero_shot's dict."""
        return dict(text=self.text, prompt_text=self.prompt_text,
                    llm_prompt_speech_token=self.speech_token, flow_prompt_speech_token=self.speech_token,
                    prompt_speech_feat=self.speech_feat, llm_embedding=self.embedding, flow_embedding=self.embedding)


def make_request(kind: str, tokens: int, seed: int, prompt_text_len: int = 12, prompt_speech_len: int = 50) -> Request:
    """A request whose LLM output is `tokens` long: text of tokens/20 ids (max_len = 20 x text)."""
    if tokens % 20:
        raise ValueError(f"tokens must be a multiple of 20 (max_len = 20 x text ids), got {tokens}")
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 151643, (1, tokens // 20), generator=g, dtype=torch.int32)
    prompt_text = torch.randint(0, 151643, (1, prompt_text_len), generator=g, dtype=torch.int32)
    if kind == "cosyvoice3":  # CV3's frontend ends the prompt text with <|endofprompt|>
        prompt_text[0, -1] = END_OF_PROMPT
    speech = torch.randint(0, SPEECH_TOKEN_SIZE, (1, prompt_speech_len), generator=g, dtype=torch.int32)
    feat = torch.randn(1, 2 * prompt_speech_len, 80, generator=g) * 2 - 6  # log-mel-like values
    emb = torch.nn.functional.normalize(torch.randn(1, 192, generator=g), dim=1)
    return Request(text, prompt_text, speech, feat, emb)


def greedy_sampling(llm: torch.nn.Module) -> None:
    """Upstream's own ras_sampling with top_k=1 and a repetition threshold above the window
    (win_size 10 x tau_r 1.1 = 11 repeats: never), so the module decodes by argmax."""
    common = importlib.import_module("cosyvoice.utils.common")
    llm.sampling = functools.partial(common.ras_sampling, top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
