"""What a hostile or careless user broke (issue 11), and the text vocabulary size (issue 13.4).

Exit with live readers, fork, size bombs, non-finite numbers, errors that name the problem, bundles
checked as the Python loader checks, Ctrl-C in generate. Cases that hung or aborted the process on
the old code run in a subprocess with a timeout, so a regression fails the test instead of the run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cosyfast
from cosyfast import _core
from cosyfast.bundle import _tensors, export_cpu_bundle, host_program, write_safetensors
from cosyfast.checkpoint import CheckpointError, load_checkpoint

EOP = 151646
INT32_MAX = 2**31 - 1


# The address-space cap is set by the child itself, before it execs what it runs: a preexec_fn
# runs Python between fork and exec, which the subprocess docs call unsafe in a process with
# threads (the test process has engine and OpenMP threads).
_CAPPED = "import os, resource, sys; n = int(sys.argv[1]); " \
    "n and resource.setrlimit(resource.RLIMIT_AS, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"


def _capped(argv: list[str], mem_gb: float | None) -> list[str]:
    return [sys.executable, "-c", _CAPPED, str(int(mem_gb * 2**30) if mem_gb else 0), *argv]


def _script(code: str, *args: str, timeout: float = 60, mem_gb: float | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (optionally under an address-space cap)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.run(_capped(argv, mem_gb) if mem_gb else argv, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _host(bundle: Path, *args: str, timeout: float = 60, mem_gb: float | None = None) -> subprocess.CompletedProcess:
    if "ASAN_OPTIONS" in os.environ:  # AddressSanitizer's shadow memory needs no cap
        mem_gb = None
    argv = [str(host_program()), str(bundle), "--text", "1,2,3", *args]
    return subprocess.run(_capped(argv, mem_gb) if mem_gb else argv, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))


def _host_fails(bundle: Path, pattern: str, *args: str, **kw) -> None:
    proc = _host(bundle, *args, **kw)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert pattern in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def models(tiny_dirs):
    with contextlib.ExitStack() as stack:
        yield {kind: stack.enter_context(cosyfast.load(path, engine="cpu")) for kind, path in tiny_dirs.items()}


def _state(model_dir: Path) -> dict:
    return torch.load(model_dir / "llm.pt", weights_only=True)


def _model_copy(src: Path, dst: Path, state: dict | None = None, config_edit=None) -> Path:
    """A copy of a model directory with another state dict and/or config."""
    shutil.copytree(src, dst)
    if state is not None:
        torch.save(state, dst / "llm.pt")
    if config_edit is not None:
        path = dst / "CosyVoice-BlankEN" / "config.json"
        config = json.loads(path.read_text())
        config_edit(config)
        path.write_text(json.dumps(config))
    return dst


def _bundle_copy(src: Path, dst: Path, config_edit=None, tensors_edit=None, model_dir: Path | None = None) -> Path:
    """A copy of bundle `src` with its config and/or tensors (those of `model_dir`'s weights) edited."""
    shutil.copytree(src, dst)
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if tensors_edit is not None:
        tensors = {k: np.array(v) for k, v in _tensors(load_checkpoint(model_dir))}
        tensors_edit(tensors)
        write_safetensors(dst / "weights.safetensors", tensors)
    return dst


# ---------------------------------------------------------------------------------------------
# 1. Exit with live readers
# ---------------------------------------------------------------------------------------------

DAEMON_READERS = """
    import sys, threading, time, cosyfast
    m = cosyfast.load(sys.argv[1], engine="cpu")
    def run(i):
        for t in m.stream([1, 2, i], seed=1, max_len=4000, min_len=3990):
            pass
    for i in range(4):
        threading.Thread(target=run, args=(i,), daemon=True).start()
    time.sleep(0.5)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_exit_with_daemon_threads_reading_streams(tiny_cv2_dir, attempt):
    proc = _script(DAEMON_READERS, str(tiny_cv2_dir))
    assert proc.returncode == 0, proc.stderr
    assert "terminate" not in proc.stderr


def test_sys_exit_while_a_thread_generates(tiny_cv2_dir):
    proc = _script("""
        import sys, threading, time, cosyfast
        m = cosyfast.load(sys.argv[1], engine="cpu")
        threading.Thread(target=lambda: m.generate([1, 2, 3], seed=1, max_len=4000, min_len=3990), daemon=True).start()
        time.sleep(0.3)
        sys.exit(3)
    """, str(tiny_cv2_dir))
    assert proc.returncode == 3, proc.stderr
    assert "terminate" not in proc.stderr


def test_exit_closes_models_and_readers_see_the_end(tiny_cv2_dir):
    """The exit handler closes live models: a reader blocked in a long stream ends (cancelled)."""
    proc = _script("""
        import atexit, sys, threading, time
        ends = []
        def report():
            deadline = time.monotonic() + 5
            while not ends and time.monotonic() < deadline:
                time.sleep(0.01)
            print(ends, flush=True)
        atexit.register(report)  # before cosyfast's own handler, so it runs after it (LIFO)
        import cosyfast
        m = cosyfast.load(sys.argv[1], engine="cpu")
        def run():
            s = m.stream([1, 2, 3], seed=1, max_len=4000, min_len=3990)
            n = sum(1 for _ in s)
            ends.append((n < 4000, s.finish_reason))
        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.3)
    """, str(tiny_cv2_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(True, 'cancelled')]", proc.stdout


# ---------------------------------------------------------------------------------------------
# 2. fork
# ---------------------------------------------------------------------------------------------

def test_fork_child_gets_a_clear_error_and_exits(tiny_cv2_dir):
    proc = _script("""
        import os, sys, time, cosyfast
        m = cosyfast.load(sys.argv[1], engine="cpu")
        assert len(m.generate([1, 2, 3], seed=0, max_len=5, min_len=5)) == 5
        s = m.stream([1, 2, 3], seed=0, max_len=4000, min_len=3990)
        pid = os.fork()
        if pid == 0:
            errors = []
            for call in (lambda: m.generate([1, 2, 3], max_len=5), lambda: m.live_sessions,
                         lambda: [t for t in s], lambda: s.wait(timeout=1.0)):
                try:
                    call()
                    errors.append("no error")
                except RuntimeError as e:
                    errors.append("fork" in str(e))
            print("child", errors, flush=True)
            sys.exit(0 if errors == [True] * 4 else 1)  # a normal exit: the model is dropped, not joined
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            sys.exit("the child hung")
        s.cancel()
        # The parent's model still works.
        assert len(m.generate([1, 2, 3], seed=0, max_len=5, min_len=5)) == 5
        sys.exit(os.waitstatus_to_exitcode(status))
    """, str(tiny_cv2_dir))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "child [True, True, True, True]" in proc.stdout


# ---------------------------------------------------------------------------------------------
# 3. Sizes checked before allocating
# ---------------------------------------------------------------------------------------------

def test_config_claiming_a_billion_layers(tiny_cv2_dir, tmp_path):
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", config_edit=lambda c: c.update(num_hidden_layers=10**9))
    proc = _script("""
        import sys
        from cosyfast.checkpoint import CheckpointError, load_checkpoint
        try:
            load_checkpoint(sys.argv[1])
        except CheckpointError as e:
            print(e)
    """, str(d), timeout=60, mem_gb=3)
    assert "num_hidden_layers is 1000000000 but the checkpoint has 2 layers" in proc.stdout, proc.stderr[-2000:]


def test_config_layers_must_equal_the_checkpoint(tiny_cv2_dir, tmp_path):
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", config_edit=lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(CheckpointError, match="num_hidden_layers is 3 but the checkpoint has 2 layers"):
        load_checkpoint(d)


def test_bundle_claiming_a_billion_layers(bundles, tmp_path):
    b = _bundle_copy(bundles["cosyvoice2"], tmp_path / "b", lambda c: c["model"].update(num_hidden_layers=10**9))
    _host_fails(b, '"num_hidden_layers"] is 1000000000 but', mem_gb=2)
    _host_fails(b, "holds 2 layers", mem_gb=2)


def test_stride_zero_views_are_refused(tiny_cv2_dir, tmp_path):
    state = _state(tiny_cv2_dir)
    key = "llm.model.model.embed_tokens.weight"
    state[key] = torch.zeros(1).expand(*state[key].shape)  # 4 bytes of storage
    state.pop("llm.model.lm_head.weight")  # tied: it would keep the real table in the file
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", state)
    # the table's 39 MB are not in the file
    assert (d / "llm.pt").stat().st_size < (tiny_cv2_dir / "llm.pt").stat().st_size - 30e6
    with pytest.raises(CheckpointError, match=r"embed_tokens.weight' of shape \[151936, 64\] needs 38895616 bytes "
                                              r"but its storage holds 4"):
        load_checkpoint(d)


def test_tensors_larger_than_the_file_are_refused(tiny_cv2_dir, tmp_path):
    """Every layer tensor a view of one shared storage: each fits it, together they exceed the file."""
    state = _state(tiny_cv2_dir)
    big = torch.zeros(state["llm.model.model.layers.0.mlp.gate_proj.weight"].numel())
    for k in [k for k in state if ".layers." in k]:
        state[k] = big[: state[k].numel()].view(state[k].shape)
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", state)
    with pytest.raises(CheckpointError, match=r"tensors' shapes need \d+ bytes but the file has only \d+"):
        load_checkpoint(d)


FIFO_LOAD = """
    import sys
    from cosyfast.checkpoint import CheckpointError, load_checkpoint
    try:
        load_checkpoint(sys.argv[1], **({"config": sys.argv[2]} if len(sys.argv) > 2 else {}))
    except CheckpointError as e:
        print(e)
"""


def test_a_fifo_in_place_of_llm_pt(tiny_cv2_dir, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    os.mkfifo(d / "llm.pt")
    for target in (d, d / "llm.pt"):
        proc = _script(FIFO_LOAD, str(target), timeout=30)
        assert "is not a regular file" in proc.stdout, proc.stderr
    proc = _script(FIFO_LOAD, str(tiny_cv2_dir), str(d / "llm.pt"), timeout=30)
    assert "is not a regular file" in proc.stdout, proc.stderr


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors"])
def test_a_fifo_in_a_bundle(bundles, tmp_path, name):
    b = _bundle_copy(bundles["cosyvoice2"], tmp_path / "b")
    (b / name).unlink()
    os.mkfifo(b / name)
    _host_fails(b, "not a regular file", timeout=30)


# ---------------------------------------------------------------------------------------------
# 4. Non-finite and out-of-range numbers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, pattern", [
    (dict(max_token_text_ratio=math.inf), "max_token_text_ratio must be a finite number > 0, got inf"),
    (dict(min_token_text_ratio=math.inf), "min_token_text_ratio must be a finite number >= 0, got inf"),
    (dict(max_token_text_ratio=math.nan), "max_token_text_ratio must be a finite number > 0, got nan"),
    (dict(tau_r=math.inf), "tau_r must be a finite number > 0"),
])
def test_non_finite_options(models, options, pattern):
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        models["cosyvoice2"].stream([1, 2, 3], **options)


def test_huge_ratios_clamp_instead_of_overflowing(models):
    m = models["cosyvoice2"]
    s = m.stream([1, 2, 3], seed=0, max_token_text_ratio=1e10, min_len=4)
    assert s.max_len == m.max_session_len - s.prompt_len + 1  # the session limit, not -2**31
    assert len(s.drain()) > 0
    s = m.stream([1, 2, 3], seed=0, min_token_text_ratio=1e10, max_len=6)
    assert s.min_len == INT32_MAX
    assert len(s.drain()) == 6
    length = _core.LengthOptions(min_token_text_ratio=1e10, max_token_text_ratio=1e10)
    assert length.min_len(5) == length.max_len(5) == INT32_MAX


@pytest.mark.parametrize("timeout", [math.inf, 1e300])
def test_infinite_timeout_waits(models, timeout):
    m = models["cosyvoice2"]
    s = m.stream([5] * 2000, seed=0, max_len=300, min_len=300)  # a long prefill: nothing is ready at once
    assert s.next(timeout=timeout) is not None
    assert s.wait(timeout=timeout) is True
    assert s.finished


def test_nan_timeout_is_an_error(models):
    s = models["cosyvoice2"].stream([1, 2, 3], seed=0, max_len=5)
    with pytest.raises(ValueError, match="timeout must be a number of seconds .* got nan"):
        s.next(timeout=math.nan)
    with pytest.raises(ValueError, match="timeout"):
        s.wait(timeout=math.nan)
    assert len(s.drain()) == 5


def test_finite_timeout_still_times_out(models):
    s = models["cosyvoice2"].bistream(seed=0)  # waits for text: no token comes
    assert s.next_event() == _core.Stream.NEED_TEXT
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no token within 0.2 s"):
        s.next_event(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 2
    s.cancel()


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: c.update(rope_theta=math.inf), "rope_theta must be a number in (0, 3.40282e+38), got inf"),
    (lambda c: c.update(rms_norm_eps=math.inf), "rms_norm_eps must be a number in (0, 1), got inf"),
    (lambda c: c.update(rms_norm_eps=1e300), "rms_norm_eps must be a number in (0, 1), got 1e+300"),
    (lambda c: c.update(rope_theta=math.nan), "rope_theta must be a number"),
])
def test_non_finite_config(tiny_cv2_dir, tmp_path, edit, pattern):
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", config_edit=edit)
    with pytest.raises(CheckpointError, match=pattern.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_checkpoint(d)


@pytest.mark.parametrize("key, value, pattern", [
    ("llm.model.model.layers.0.mlp.up_proj.weight", 1e19, "holds 1e+19; weights must have magnitude at most 1e+06"),
    ("llm_decoder.weight", 3e38, "holds 3e+38"),
    ("llm_decoder.bias", -1e7, "holds 1e+07"),
])
def test_huge_weights_are_refused(tiny_cv2_dir, tmp_path, key, value, pattern):
    state = _state(tiny_cv2_dir)
    state[key] = state[key].clone()
    state[key].view(-1)[7] = value
    d = _model_copy(tiny_cv2_dir, tmp_path / "m", state)
    with pytest.raises(CheckpointError, match=re.escape(f"'{key}' {pattern}")):
        load_checkpoint(d)


def test_an_infinite_score_is_an_error_not_a_greedy_draw():
    scores = np.array([0.0, math.inf, 0.5, 0.1], np.float32)
    for method in ("ras", "nucleus", "random"):
        with pytest.raises(RuntimeError, match=r"\+inf"):
            _core.testing.sample_many(method, scores, [], _core.SamplingOptions(), 0, 4)


# ---------------------------------------------------------------------------------------------
# 5. Errors that name the argument, the value and what is allowed
# ---------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    # (keyword arguments of generate, exception, pattern)
    (dict(text_ids=[1, 2**31]), ValueError, r"text_ids: id 2147483648 is outside the token id range \[0, 2\*\*31\)"),
    (dict(text_ids=[1, -2**40]), ValueError, r"text_ids: id -1099511627776 is outside"),
    (dict(prompt_text_ids=[2**63]), ValueError, r"prompt_text_ids: id 9223372036854775808"),
    (dict(prompt_speech_tokens=[2**35]), ValueError, r"prompt_speech_tokens: id 34359738368"),
    (dict(text_ids=[[1, 2], [3]]), ValueError, r"text_ids must be a flat sequence of integer token ids"),
    (dict(seed=2**64), ValueError, r"seed must be an integer in \[0, 18446744073709551615\], got 18446744073709551616"),
    (dict(seed=1.0), TypeError, r"seed must be an integer .* got 1.0"),
    (dict(seed="7"), TypeError, r"seed must be an integer .* got '7'"),
    (dict(seed=True), TypeError, r"seed must be an integer .* got True"),
    (dict(top_k=2**31), ValueError, r"top_k must be an integer in \[-2147483648, 2147483647\], got 2147483648"),
    (dict(top_k=0), ValueError, r"top_k must be >= 1, got 0"),
    (dict(top_k=True), TypeError, r"top_k must be an integer .* got True"),
    (dict(top_k=2.0), TypeError, r"top_k must be an integer .* got 2.0"),
    (dict(win_size=2**40), ValueError, r"win_size must be an integer in \[-2147483648, 2147483647\]"),
    (dict(win_size=0), ValueError, r"win_size must be >= 1 when ras is on, got 0"),
    (dict(max_len=5.5), TypeError, r"max_len must be an integer .* got 5.5"),
    (dict(max_len=-1), ValueError, r"max_len must be an integer in \[1, 2147483647\], got -1"),
    (dict(max_len=2**31), ValueError, r"max_len must be an integer in \[1, 2147483647\]"),
    (dict(min_len=-1), ValueError, r"min_len must be an integer in \[0, 2147483647\], got -1"),
    (dict(min_len="3"), TypeError, r"min_len must be an integer"),
    (dict(ras=None), TypeError, r"ras must be True or False, got None"),
    (dict(ras=1), TypeError, r"ras must be True or False, got 1"),
    (dict(exclude_repeated="no"), TypeError, r"exclude_repeated must be True or False, got 'no'"),
    (dict(top_p="0.5"), TypeError, r"top_p must be a number, got '0.5'"),
    (dict(top_p=True), TypeError, r"top_p must be a number, got True"),
    (dict(tau_r=None), TypeError, r"tau_r must be a number, got None"),
    (dict(min_token_text_ratio=10**400), ValueError, r"min_token_text_ratio must be a finite number"),
    (dict(max_token_text_ratio=[20]), TypeError, r"max_token_text_ratio must be a number, got \[20\]"),
]


@pytest.mark.parametrize("kwargs, error, pattern", BAD_REQUESTS)
def test_bad_requests_name_the_problem(models, kwargs, error, pattern):
    m = models["cosyvoice2"]
    kwargs = dict(kwargs)
    text = kwargs.pop("text_ids", [1, 2, 3])
    with pytest.raises(error, match=pattern):
        m.generate(text, **kwargs)
    assert m.live_sessions == 0


@pytest.mark.parametrize("mix_ratio, error, pattern", [
    ((5, 15, 1), TypeError, r"mix_ratio must be a pair \(text_group, speech_group\) of integers >= 1, got \(5, 15, 1\)"),
    (5, TypeError, r"mix_ratio must be a pair"),
    ((0, 15), ValueError, r"text_group \(mix_ratio\[0\]\) must be >= 1, got 0"),
    ((5, 2.5), TypeError, r"mix_ratio\[1\] \(speech_group\) must be an integer .* got 2.5"),
])
def test_bad_mix_ratio(models, mix_ratio, error, pattern):
    with pytest.raises(error, match=pattern):
        models["cosyvoice2"].bistream(mix_ratio=mix_ratio)


def test_core_length_options_refuse_negative_lengths():
    # Plain data; the core's Validate() refuses the values (-1 is the core's "unset").
    with pytest.raises(ValueError, match=r"max_len must be > 0 \(or unset\), got -3"):
        _core.LengthOptions(max_len=-3).validate()
    with pytest.raises(ValueError, match=r"min_len must be >= 0 \(or unset\), got -3"):
        _core.LengthOptions(min_len=-3).validate()


def test_huge_session_limit_is_refused_before_allocating(tiny_cv2_dir):
    with pytest.raises(ValueError, match=r"max_session_len must be >= 1 and <= 131072, got 1000000000"):
        cosyfast.load(tiny_cv2_dir, engine="cpu", max_session_len=10**9)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_code_carrying_pickle_is_named(tmp_path):
    torch.save({"x": torch.zeros(2), "y": _RunsCode()}, tmp_path / "llm.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True: it holds a Python object \(posix.system\)"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# 6. Bundles held to the Python loader's checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, config_edit, tensors_edit, pattern", [
    ("cosyvoice2", None, lambda t: t.pop("decoder_bias"), "has no tensor 'decoder_bias', which a cosyvoice2 decoder needs"),
    ("cosyvoice3", None, lambda t: t.update(decoder_bias=np.zeros(6761, np.float32)),
     "unexpected tensor 'decoder_bias': no cosyvoice3 decoder has a bias"),
    ("cosyvoice2", lambda c: c["vocab"].update(fill_token=-5), None, "fill_token -5 must be -1 (none) or in [6561, 6564)"),
    ("cosyvoice2", lambda c: c["vocab"].update(fill_token=10**9), None, "fill_token 1000000000 must be"),
    ("cosyvoice2", lambda c: c["vocab"].update(speech_token_size=1), None,
     '"vocab"["speech_token_size"] is 1 but a cosyvoice2 bundle has 6561'),
    ("cosyvoice3", lambda c: c["vocab"].update(stop_ids=[6562]), None, '"vocab"["stop_ids"] differ from the cosyvoice3'),
    ("cosyvoice2", lambda c: c["vocab"].update(stop_ids=[5, 6561]), None, "stop id 5 is outside the special decoder rows"),
    ("cosyvoice2", lambda c: c.update(kind="cosyvoice9") or c["vocab"].update(name="cosyvoice9"), None,
     '"kind" must be "cosyvoice2" or "cosyvoice3", got "cosyvoice9"'),
    ("cosyvoice2", lambda c: c["model"].update(rms_norm_eps=1e300), None, "rms_eps must be in (0, 1), got 1e+300"),
    ("cosyvoice2", lambda c: c["model"].update(rope_theta=1e300), None, "rope_theta must be a finite float32 > 0"),
    ("cosyvoice2", None, lambda t: t["layers.1.mlp.down_proj.weight"].reshape(-1).__setitem__(3, 1e19),
     "tensor 'layers.1.mlp.down_proj.weight' holds 1e+19 at element 3"),
    ("cosyvoice2", None, lambda t: t["text_embedding"].reshape(-1).__setitem__(0, np.inf),
     "tensor 'text_embedding' holds inf at element 0"),
    ("cosyvoice3", None, lambda t: t.update(text_embedding=t["text_embedding"][:1000].copy()),
     "it must hold id 151646, <|endofprompt|>"),
])
def test_bad_bundles(bundles, tiny_dirs, tmp_path, kind, config_edit, tensors_edit, pattern):
    b = _bundle_copy(bundles[kind], tmp_path / "b", config_edit, tensors_edit, tiny_dirs[kind])
    _host_fails(b, pattern)


# ---------------------------------------------------------------------------------------------
# 7. Ctrl-C in generate()
# ---------------------------------------------------------------------------------------------

def test_ctrl_c_interrupts_generate_and_cancels_the_session(tiny_cv2_dir):
    proc = _script("""
        import os, signal, sys, threading, time, cosyfast
        m = cosyfast.load(sys.argv[1], engine="cpu", max_session_len=40000)
        # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
        # jobs with SIGINT ignored, and Python then installs none (CI run with `&` hung here).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        start = time.monotonic()
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            m.generate([1, 2, 3], seed=0, min_len=39000, max_len=39000)  # minutes of work
            print("not interrupted")
        except KeyboardInterrupt:
            raised = time.monotonic() - start
            while m.live_sessions and time.monotonic() - start < 20:
                time.sleep(0.01)
            print(f"interrupted {raised:.2f} live {m.live_sessions}", flush=True)
    """, str(tiny_cv2_dir), timeout=40)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "interrupted", proc.stdout
    assert float(words[1]) < 3.0 and words[3] == "0", proc.stdout


# ---------------------------------------------------------------------------------------------
# 8. Scheduler counters by the time a stream ends (the flaky lanes test)
# ---------------------------------------------------------------------------------------------

def test_rounds_are_counted_before_the_stream_ends(tiny_cv2_dir):
    """A round is in stats before its sessions' ends are delivered: a reader that saw the end never
    finds the round missing (it used to land after, so under load a lane read one round short)."""
    with cosyfast.load(tiny_cv2_dir, engine="cpu", lanes=2) as m:
        for i in range(40):
            before = m.stats["rounds"]
            assert len(m.generate([1, 2, 3], seed=i, min_len=3, max_len=3)) == 3
            assert m.stats["rounds"] - before >= 3


# ---------------------------------------------------------------------------------------------
# Issue 13.4: text vocabulary of any size that holds the ids used
# ---------------------------------------------------------------------------------------------

def _resized_text(tiny_dir: Path, dst: Path, rows: int) -> Path:
    state = _state(tiny_dir)
    key = "llm.model.model.embed_tokens.weight"
    old = state[key]
    new = torch.randn(rows, old.shape[1], generator=torch.Generator().manual_seed(1)) * 0.02
    n = min(rows, old.shape[0])
    new[:n] = old[:n]
    state[key] = new
    state.pop("llm.model.lm_head.weight", None)
    return _model_copy(tiny_dir, dst, state, config_edit=lambda c: c.update(vocab_size=rows))


@pytest.mark.parametrize("rows", [152000, 1000])
def test_text_vocab_of_any_size(tiny_cv2_dir, tmp_path, rows):
    d = _resized_text(tiny_cv2_dir, tmp_path / "m", rows)
    w = load_checkpoint(d)
    assert w.text_embedding.shape == (rows, 64)
    with cosyfast.load(w, engine="cpu") as m:
        assert len(m.generate([1, rows - 1], seed=0, min_len=3, max_len=3)) == 3
        with pytest.raises(ValueError, match=rf"text id: id {rows} is outside \[0, {rows}\)"):
            m.generate([1, rows])
        with pytest.raises(ValueError, match=rf"prompt text id {rows} is outside \[0, {rows}\)"):
            m.bistream(prompt_text_ids=[rows])
        s = m.bistream(seed=0)
        with pytest.raises(ValueError, match=rf"text id {rows} is outside \[0, {rows}\)"):
            s.push_text([rows])
        s.cancel()


def test_bigger_text_vocab_in_the_host(tiny_cv2_dir, tmp_path):
    b = export_cpu_bundle(load_checkpoint(_resized_text(tiny_cv2_dir, tmp_path / "m", 160000)), tmp_path / "b")
    proc = _host(b, "--text", "5,159999", "--max-len", "4", "--min-len", "4")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 4
    _host_fails(b, "text id: id 160000 is outside [0, 160000)", "--text", "5,160000")


def test_cosyvoice3_text_vocab_must_hold_endofprompt(tiny_cv3_dir, tmp_path):
    d = _resized_text(tiny_cv3_dir, tmp_path / "m", 1000)
    with pytest.raises(CheckpointError, match=r"embed_tokens.weight' has 1000 rows, but cosyvoice3 needs id 151646"):
        load_checkpoint(d)
    w = load_checkpoint(_resized_text(tiny_cv3_dir, tmp_path / "m2", EOP + 1))
    with cosyfast.load(w, engine="cpu") as m:
        assert len(m.generate([EOP, 5], seed=0, min_len=2, max_len=2)) == 2
