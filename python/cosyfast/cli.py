"""The `cosyfast` command: `cosyfast demo` runs the LLM stage end to end on an embedded default."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

TOKENS_PER_SECOND_OF_AUDIO = 25


def demo_requests(kind: str, count: int, seed: int) -> list[dict]:
    """A few CosyVoice-shaped requests: prompt text, text and prompt speech ids drawn at random."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(count):
        prompt_text = rng.integers(0, 151643, size=int(rng.integers(8, 16))).tolist()
        text = rng.integers(0, 151643, size=int(rng.integers(10, 30))).tolist()
        if kind == "cosyvoice3":
            prompt_text = prompt_text + [151646]  # CosyVoice3 texts carry <|endofprompt|>
        speech = rng.integers(0, 6561, size=int(rng.integers(50, 100))).tolist()
        requests.append(dict(text_ids=text, prompt_text_ids=prompt_text, prompt_speech_tokens=speech, seed=seed + i))
    return requests


def run_demo(args: argparse.Namespace) -> int:
    from . import load
    from .synthetic import ensure_default_model

    if args.engine == "turbomind":  # before building a checkpoint: say at once what is missing
        from .turbomind import check_turbomind

        check_turbomind()
    if args.checkpoint:
        path = Path(args.checkpoint)
    else:
        print(f"building (once) a synthetic {args.kind} checkpoint, size {args.size} ...", flush=True)
        path = ensure_default_model(kind=args.kind, size=args.size)
    t0 = time.perf_counter()
    model = load(path, engine=args.engine)
    print(f"loaded {path} as {model.kind} on engine {model.engine} in {time.perf_counter() - t0:.1f} s", flush=True)

    requests = demo_requests(model.kind, args.prompts, args.seed)
    options = dict(max_len=args.max_len) if args.max_len else {}
    # Warm-up (not timed): one short request.
    model.generate(**{**requests[0], "max_len": 4})
    t0 = time.perf_counter()
    streams = [model.stream(**r, **options) for r in requests]  # all in flight together
    outputs = [s.drain() for s in streams]
    wall = time.perf_counter() - t0

    for i, (stream, tokens) in enumerate(zip(streams, outputs)):
        shown = " ".join(map(str, tokens[:16])) + (" ..." if len(tokens) > 16 else "")
        print(f"request {i}: {len(tokens)} tokens ({stream.finish_reason}): {shown}")
    total = sum(len(t) for t in outputs)
    audio_s = total / TOKENS_PER_SECOND_OF_AUDIO
    print(f"{len(requests)} requests together, {total} tokens in {wall:.2f} s: "
          f"{total / wall:.1f} tokens/s, LLM RTF {wall / audio_s if audio_s else float('nan'):.3f} "
          f"(wall / (tokens / {TOKENS_PER_SECOND_OF_AUDIO}))")
    model.close()
    return 0


def run_export_bundle(args: argparse.Namespace) -> int:
    from .bundle import export_cpu_bundle

    try:
        out = export_cpu_bundle(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    print(f"wrote the CPU bundle {out} (run it with cosyfast-host {out} --text IDS)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ._paths import cmake_dir, pkgconfig_dir
    from .info import main as info_main

    # Just the path, for a build script: cmake -Dcosyfast_DIR="$(cosyfast info --cmake-dir)"
    if args.cmake_dir or args.pkg_config_dir:
        print(cmake_dir() if args.cmake_dir else pkgconfig_dir())
        return 0
    return info_main(as_json=args.json)


def _serve(argv: list[str]) -> int:
    try:
        from .serve.server import main as serve_main
    except ImportError as e:
        print(f"cosyfast serve needs the serve extra (pip install \".[serve]\" in a checkout): {e}", file=sys.stderr)
        return 2
    try:
        return serve_main(argv)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"cosyfast serve: {e}", file=sys.stderr)
        return 2


def _bench(argv: list[str]) -> int:
    # The plot is drawn after the runs: a missing matplotlib must stop the command before them.
    if "--plot" in argv and importlib.util.find_spec("matplotlib") is None:
        print("cosyfast bench --plot draws with matplotlib, which is not installed: pip install \".[plot]\" "
              "from a checkout (or pip install matplotlib), or leave out --plot", file=sys.stderr)
        return 2
    from .bench import main as bench_main

    return bench_main(argv)


def _host_program(name: str, argv: list[str]) -> int:
    from .bundle import run_program

    return run_program(name, argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cosyfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate speech tokens for a few prompts and print tokens/s and RTF")
    demo.add_argument("--checkpoint", help="a CosyVoice llm.pt or model directory (default: a synthetic one)")
    demo.add_argument("--engine", default="auto", choices=["auto", "cpu", "turbomind"])
    demo.add_argument("--kind", default="cosyvoice2", choices=["cosyvoice2", "cosyvoice3"],
                      help="layout of the synthetic checkpoint")
    demo.add_argument("--size", default="tiny", choices=["tiny", "full"], help="size of the synthetic checkpoint")
    demo.add_argument("--prompts", type=int, default=4)
    demo.add_argument("--max-len", type=int, default=None, help="cap on tokens per request")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)
    export = sub.add_parser("export-bundle", help="write a CPU bundle for C++ hosts (include/cosyfast/c_api.h)")
    export.add_argument("checkpoint", help="a CosyVoice2/3 llm.pt or model directory")
    export.add_argument("out_dir", help="the bundle directory to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    export.set_defaults(func=run_export_bundle)
    info = sub.add_parser("info", help="print the version, build, engines, CUDA and GPUs (for bug reports)")
    shown = info.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.add_argument("--cmake-dir", action="store_true",
                       help="print only the directory of cosyfastConfig.cmake (for find_package(cosyfast))")
    shown.add_argument("--pkg-config-dir", action="store_true",
                       help="print only the directory of cosyfast.pc (for PKG_CONFIG_PATH)")
    info.set_defaults(func=run_info)
    sub.add_parser("bench", help="benchmark paths over a concurrency sweep (see `cosyfast bench --help`)",
                   add_help=False)
    sub.add_parser("serve", help="the LLM stage as a streaming HTTP service (see `cosyfast serve --help`)",
                   add_help=False)
    sub.add_parser("host", help="run cosyfast-host, one request on a bundle without Python (also on PATH as "
                   "cosyfast-host)", add_help=False)
    sub.add_parser("load", help="run cosyfast-load, many concurrent requests on a bundle (also on PATH as "
                   "cosyfast-load)", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] in (["host"], ["load"]):
        return _host_program(f"cosyfast-{argv[0]}", argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:  # ImportError: an engine not built
        print(f"cosyfast: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
