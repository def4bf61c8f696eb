"""Bad input raises ValueError naming the problem; a bad checkpoint raises CheckpointError."""
import os
import shutil

import numpy as np
import pytest

import cosyfast
from cosyfast.checkpoint import CheckpointError

KINDS = ("cosyvoice2", "cosyvoice3")
EOP = 151646
GOOD_TEXT = {"cosyvoice2": [1, 2, 3], "cosyvoice3": [EOP, 2, 3]}


@pytest.fixture(scope="module")
def models(tiny_dirs):
    ms = {kind: cosyfast.load(path, engine="cpu") for kind, path in tiny_dirs.items()}
    yield ms
    for m in ms.values():
        m.close()


def _still_works(m, kind):
    assert m.live_sessions == 0
    assert len(m.generate(GOOD_TEXT[kind], seed=0, min_len=3, max_len=3)) == 3


# ----------------------------------------------------------------------------------------------
# Request input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_empty_text(models, kind):
    m = models[kind]
    with pytest.raises(ValueError, match=r"(?i)text.*empty|empty.*text"):
        m.generate([])
    with pytest.raises(ValueError, match=r"(?i)text.*empty|empty.*text"):
        m.generate([], prompt_text_ids=GOOD_TEXT[kind], prompt_speech_tokens=[1, 2])
    with pytest.raises(ValueError, match=r"(?i)text.*empty|empty.*text"):
        m.stream(np.zeros(0, np.int64))
    _still_works(m, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [151936, 10**6, -1])
def test_text_id_out_of_range(models, kind, bad):
    m = models[kind]
    text = GOOD_TEXT[kind] + [bad]
    with pytest.raises(ValueError, match=rf"(?i)text.*{bad}.*outside|text.*outside.*{bad}|{bad}.*text"):
        m.generate(text)
    # in the prompt text too
    with pytest.raises(ValueError, match=rf"(?i)text.*{bad}|{bad}.*text"):
        m.generate(GOOD_TEXT[kind], prompt_text_ids=[5, bad])
    _still_works(m, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_highest_text_id_is_fine(models, kind):
    assert len(models[kind].generate(GOOD_TEXT[kind] + [151935, 0], seed=0, min_len=2, max_len=2)) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [6561, 6563, 6564, 10**5, -1])
def test_prompt_speech_token_out_of_range(models, kind, bad):
    m = models[kind]
    with pytest.raises(ValueError, match=rf"(?i)prompt speech.*{bad}.*6561|speech token.*{bad}"):
        m.generate(GOOD_TEXT[kind], prompt_speech_tokens=[0, 5, bad, 6])
    _still_works(m, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_last_speech_token_is_fine(models, kind):
    got = models[kind].generate(GOOD_TEXT[kind], prompt_speech_tokens=[0, 6560], seed=0, min_len=2, max_len=2)
    assert len(got) == 2


def test_non_integer_ids(models):
    m = models["cosyvoice2"]
    with pytest.raises(ValueError, match=r"(?i)integer|int"):
        m.generate([1.5, 2.0])
    with pytest.raises(ValueError, match=r"(?i)integer|int"):
        m.generate([1, 2], prompt_speech_tokens=np.array([0.5]))


def test_cosyvoice3_needs_endofprompt(models):
    m = models["cosyvoice3"]
    with pytest.raises(ValueError, match=r"151646|endofprompt"):
        m.generate([1, 2, 3])
    with pytest.raises(ValueError, match=r"151646|endofprompt"):
        m.generate([1, 2, 3], prompt_text_ids=[7, 8], prompt_speech_tokens=[1, 2])
    # in the text or in the prompt text (upstream puts it at the end of the prompt text)
    assert len(m.generate([1, 2, EOP], seed=0, min_len=2, max_len=2)) == 2
    assert len(m.generate([1, 2], prompt_text_ids=[7, EOP], seed=0, min_len=2, max_len=2)) == 2
    # CosyVoice2 has no such rule
    assert len(models["cosyvoice2"].generate([1, 2, 3], seed=0, min_len=2, max_len=2)) == 2
    _still_works(m, "cosyvoice3")


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_longer_than_the_session_limit(tiny_dirs, kind):
    limit = 32
    with cosyfast.load(tiny_dirs[kind], engine="cpu", max_session_len=limit) as m:
        # sos + 40 text ids + task_id = 42 rows > 32
        with pytest.raises(ValueError, match=r"(?i)session limit|max_session_len|too long|longer"):
            m.generate([EOP] + [5] * 39)
        # the prompt speech counts too: 2 + 3 + 40 rows
        with pytest.raises(ValueError, match=r"(?i)session limit|max_session_len|too long|longer"):
            m.generate(GOOD_TEXT[kind], prompt_speech_tokens=[1] * 40)
        assert m.live_sessions == 0
        # a prompt that fits runs, and the output stops at the limit whatever max_len says
        got = m.generate(GOOD_TEXT[kind], seed=0, min_len=1000, max_len=1000)
        assert 0 < len(got) <= limit
        assert m.live_sessions == 0


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(top_p=0.0), r"top_p"),
        (dict(top_p=-0.5), r"top_p"),
        (dict(top_p=1.5), r"top_p"),
        (dict(top_p=float("nan")), r"top_p"),
        (dict(top_k=0), r"top_k"),
        (dict(top_k=-3), r"top_k"),
        (dict(win_size=0), r"win_size"),
        (dict(tau_r=0.0), r"tau_r"),
        (dict(tau_r=-1.0), r"tau_r"),
        (dict(max_len=0), r"max_len"),
        (dict(max_len=-5), r"max_len"),
        (dict(min_len=-2), r"min_len"),
        (dict(min_token_text_ratio=-1.0), r"min_token_text_ratio"),
        (dict(max_token_text_ratio=0.0), r"max_token_text_ratio"),
        (dict(seed=-1), r"seed"),
    ],
)
def test_bad_options(models, options, pattern):
    m = models["cosyvoice2"]
    with pytest.raises(ValueError, match=pattern):
        m.generate([1, 2, 3], **options)
    with pytest.raises(ValueError, match=pattern):
        m.stream([1, 2, 3], **options)
    _still_works(m, "cosyvoice2")


def test_bad_sampling_options_object():
    # Plain data: the core's one Validate() refuses it where it is used (or on validate()).
    for bad, name in ((dict(top_p=0.0), "top_p"), (dict(top_k=0), "top_k"), (dict(win_size=0), "win_size")):
        o = cosyfast._core.SamplingOptions(**bad)
        with pytest.raises(ValueError, match=name):
            o.validate()
        with pytest.raises(ValueError, match=name):
            cosyfast._core.testing.sample_many("ras", np.zeros(4, np.float32), [], o, 0, 10)


def test_bad_sample_many_arguments():
    o = cosyfast._core.SamplingOptions()
    with pytest.raises(ValueError, match="method"):
        cosyfast._core.testing.sample_many("greedy", np.zeros(4, np.float32), [], o, 0, 10)
    with pytest.raises(ValueError, match="scores"):
        cosyfast._core.testing.sample_many("ras", np.zeros(0, np.float32), [], o, 0, 10)
    with pytest.raises(ValueError, match="scores"):
        cosyfast._core.testing.sample_many("ras", np.zeros((2, 3), np.float32), [], o, 0, 10)


def test_unknown_engine(tiny_dirs):
    with pytest.raises(ValueError, match="engine"):
        cosyfast.load(tiny_dirs["cosyvoice2"], engine="tensorrt")


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert cosyfast.CheckpointError is CheckpointError


def _broken_copy(src_dir, dst_dir, edit):
    """The model directory with its llm.pt state dict passed through `edit`."""
    import torch

    state = torch.load(os.path.join(src_dir, "llm.pt"), map_location="cpu", weights_only=True)
    state = edit(dict(state))
    os.makedirs(dst_dir, exist_ok=True)
    torch.save(state, os.path.join(dst_dir, "llm.pt"))
    shutil.copytree(os.path.join(src_dir, "CosyVoice-BlankEN"), os.path.join(dst_dir, "CosyVoice-BlankEN"))
    return dst_dir


def _drop(key):
    def edit(state):
        del state[key]
        return state

    return edit


def _reshape(key, rows):
    def edit(state):
        t = state[key]
        state[key] = t[:rows].clone()
        return state

    return edit


@pytest.mark.parametrize(
    "kind, edit, pattern",
    [
        ("cosyvoice2", _drop("llm_decoder.weight"), r"missing.*llm_decoder\.weight"),
        ("cosyvoice2", _drop("llm_decoder.bias"), r"missing.*llm_decoder\.bias"),
        ("cosyvoice2", _drop("llm.model.model.layers.1.self_attn.k_proj.bias"), r"missing.*layers\.1\.self_attn\.k_proj\.bias"),
        ("cosyvoice2", _drop("llm.model.model.norm.weight"), r"missing.*norm\.weight"),
        ("cosyvoice2", _drop("llm_embedding.weight"), r"llm_embedding"),
        ("cosyvoice3", _drop("llm.model.model.embed_tokens.weight"), r"embed_tokens"),
        ("cosyvoice2", _reshape("llm.model.model.layers.0.mlp.up_proj.weight", 100), r"up_proj.*shape|shape.*up_proj"),
        ("cosyvoice3", _reshape("llm_decoder.weight", 6564), r"llm_decoder\.weight.*shape|shape.*llm_decoder"),
        ("cosyvoice2", _reshape("speech_embedding.weight", 6000), r"speech_embedding"),
    ],
)
def test_broken_checkpoint(tiny_dirs, tmp_path, kind, edit, pattern):
    path = _broken_copy(tiny_dirs[kind], str(tmp_path / "model"), edit)
    with pytest.raises(CheckpointError, match=pattern):
        cosyfast.load(path, engine="cpu")
    # also through the llm.pt path
    with pytest.raises(CheckpointError, match=pattern):
        cosyfast.load(os.path.join(path, "llm.pt"), engine="cpu")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "llm.pt"
    bad.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"(?i)checkpoint"):
        cosyfast.load(str(bad), engine="cpu")
    with pytest.raises(CheckpointError, match=r"(?i)checkpoint"):
        cosyfast.load(str(tmp_path), engine="cpu")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        cosyfast.load(str(empty), engine="cpu")


def test_a_tensor_list_is_not_a_state_dict(tmp_path):
    import torch

    path = tmp_path / "llm.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match=r"(?i)state dict|list"):
        cosyfast.load(str(path), engine="cpu")


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match=r"(?i)not exist|no such|missing|not found"):
        cosyfast.load(str(tmp_path / "nowhere" / "llm.pt"), engine="cpu")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match=r"llm\.pt"):
        cosyfast.load(str(tmp_path / "emptydir"), engine="cpu")


def test_config_that_does_not_match_the_weights(tiny_dirs, tmp_path):
    import json

    dst = tmp_path / "model"
    shutil.copytree(tiny_dirs["cosyvoice2"], dst)
    cfg_path = dst / "CosyVoice-BlankEN" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] = 128
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"hidden"):
        cosyfast.load(str(dst), engine="cpu")


def test_nan_weights(tiny_dirs, tmp_path):
    def edit(state):
        t = state["llm_decoder.weight"].clone()
        t[5, 3] = float("nan")
        state["llm_decoder.weight"] = t
        return state

    path = _broken_copy(tiny_dirs["cosyvoice2"], str(tmp_path / "model"), edit)
    with pytest.raises(CheckpointError, match=r"(?i)nan|finite"):
        cosyfast.load(path, engine="cpu")
