"""Text in: cosyfast.text against the tokenizer libraries' own ids (transformers' Qwen2 tokenizer
with upstream CosyVoice's special tokens added), the demo model's tokenizer, and the service's
`text` / `prompt_text` fields (tokens equal those for the same ids)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("tokenizers", reason="cosyfast.text needs the text extra: pip install '.[text]'")

import cosyfast  # noqa: E402
from cosyfast.synthetic import write_tokenizer  # noqa: E402
from cosyfast.text import COSYVOICE2_SPECIALS, COSYVOICE3_SPECIALS, NoTokenizer, Tokenizer, load_tokenizer  # noqa: E402

TEXTS = [
    "Hello there, the voice speaks.",
    "The prompt's words.<|endofprompt|>Say it again!",
    "Numbers 12345 and  two spaces\n\nnew  line\ttab",
    "中文 测试，[breath] ok [laughter] <strong>loud</strong>",
    "[AA1] [ǜ] <|endofsystem|> <|im_start|>x<|im_end|><|endoftext|>",
    "café naïve Ångström",  # NFC
    "",
]


@pytest.mark.parametrize("kind, specials", [("cosyvoice2", COSYVOICE2_SPECIALS), ("cosyvoice3", COSYVOICE3_SPECIALS)])
def test_ids_equal_transformers_with_upstream_specials(tiny_cv2_dir: Path, kind: str, specials: tuple) -> None:
    transformers = pytest.importorskip("transformers")
    tok_dir = tiny_cv2_dir / "CosyVoice-BlankEN"
    ours = load_tokenizer(tiny_cv2_dir, kind)
    assert ours.source == tok_dir
    # upstream's get_qwen_tokenizer: AutoTokenizer, then add_special_tokens with its list
    ref = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    ref.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": list(specials)})
    for text in TEXTS:
        assert ours.encode(text) == ref([text])["input_ids"][0], text
    for t in specials:
        assert ours.token_to_id(t) == ref.convert_tokens_to_ids(t)
    assert ours.token_to_id("<|endoftext|>") == 151643 and ours.token_to_id("<|endofprompt|>") == 151646
    assert ours.decode(ours.encode(TEXTS[1])) == TEXTS[1]


def test_demo_tokenizer_is_deterministic(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    again = write_tokenizer(tmp_path / "tok")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        a, b = (tiny_cv2_dir / "CosyVoice-BlankEN" / name).read_bytes(), (again / name).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name
    assert len(load_tokenizer(tiny_cv2_dir).encode("the model speaks")) < len("the model speaks")  # merges work


def test_no_tokenizer_and_bad_tokenizer(tiny_cv2_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_cv2_dir / "llm.pt", bare / "llm.pt")
    with pytest.raises(NoTokenizer, match="has no tokenizer"):
        load_tokenizer(bare / "llm.pt")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_cv2_dir / "CosyVoice-BlankEN", bad)
    config = json.loads((bad / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["151000"] = config["added_tokens_decoder"].pop("151643")
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"declares '<\|endoftext\|>' as id 151000"):
        Tokenizer.from_dir(bad)
    with pytest.raises(ValueError, match="kind must be one of"):
        Tokenizer.from_dir(tiny_cv2_dir / "CosyVoice-BlankEN", "cosyvoice9")


# --- the service -------------------------------------------------------------------------------

httpx = pytest.importorskip("httpx", reason="the serve tests need the serve extra: pip install '.[serve]'")
pytest.importorskip("fastapi", reason="the serve tests need the serve extra: pip install '.[serve]'")
from httpx_ws import WebSocketDisconnect, connect_ws  # noqa: E402

from cosyfast.serve import BackgroundServer, Service  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_cv2_dir: Path) -> Iterator[cosyfast.Model]:
    with cosyfast.load(tiny_cv2_dir, engine="cpu") as m:
        yield m


def test_text_fields_equal_their_ids(model: cosyfast.Model, tiny_cv2_dir: Path) -> None:
    tok = load_tokenizer(tiny_cv2_dir, model.kind)
    text, prompt = "Hello there, the voice speaks today.", "The quiet river."
    ids = dict(text_ids=tok.encode(text), prompt_text_ids=tok.encode(prompt))
    common = dict(prompt_speech_tokens=[11, 12, 13], seed=5, max_len=60, stream=False)
    with BackgroundServer(Service(model, tokenizer=tok)) as url, httpx.Client(base_url=url, timeout=30) as c:
        by_text = c.post("/v1/speech_tokens", json=dict(text=text, prompt_text=prompt, **common)).json()
        by_ids = c.post("/v1/speech_tokens", json=dict(**ids, **common)).json()
        assert by_text == by_ids and by_text["tokens"]
        assert by_text["tokens"] == model.generate(**ids, prompt_speech_tokens=[11, 12, 13], seed=5, max_len=60)
        mixed = c.post("/v1/speech_tokens", json=dict(text=text, prompt_text_ids=ids["prompt_text_ids"], **common))
        assert mixed.json() == by_ids
        both = c.post("/v1/speech_tokens", json=dict(text=text, text_ids=[1], stream=False))
        assert both.status_code == 422 and both.json()["error"]["field"] == "text"
        # bistream: text pieces as strings
        with connect_ws(url.replace("http", "ws") + "/v1/speech_tokens/bistream") as ws:
            ws.send_json(dict(prompt_text=prompt, prompt_speech_tokens=[11, 12, 13], seed=5, max_len=200))
            pieces, tokens = ["Hello there,", " the voice", " speaks today."], []
            while True:
                msg = ws.receive_json()
                if "need_text" in msg:
                    ws.send_json({"text": pieces.pop(0)} if pieces else {"end": True})
                elif "tokens" in msg:
                    tokens += msg["tokens"]
                else:
                    break
    s = model.bistream(ids["prompt_text_ids"], [11, 12, 13], seed=5, max_len=200)
    for p in ["Hello there,", " the voice", " speaks today."]:
        s.push_text(tok.encode(p))
    s.end_text()
    ref = [e for e in iter(s.next_event, None) if e != s.NEED_TEXT]
    assert tokens == ref and msg["num_tokens"] == len(ref)


def test_text_without_a_tokenizer_is_a_clear_422(model: cosyfast.Model) -> None:
    with BackgroundServer(Service(model, no_tokenizer_reason="x has no tokenizer")) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/speech_tokens", json={"text": "hello"})
            assert r.status_code == 422
            assert r.json()["error"] == {"field": "text", "message": "text: this model has no tokenizer (x has no "
                                         "tokenizer); give text_ids"}
            r = c.post("/v1/speech_tokens", json={"text_ids": [1], "prompt_text": "hello"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "prompt_text"
        with connect_ws(url.replace("http", "ws") + "/v1/speech_tokens/bistream") as ws:
            ws.send_json({"prompt_text_ids": [1]})
            assert ws.receive_json() == {"need_text": True}
            ws.send_json({"text": "hello"})
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_json()
            assert closed.value.code == 1008 and "no tokenizer" in closed.value.reason
    assert model.live_sessions == 0
