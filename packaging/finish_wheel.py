"""The last step of packaging/build_wheel.sh: the wheel's version gets its local part (+cu12 /
+cu13), its metadata the CUDA requirements, and its libraries the RPATH to the nvidia-* wheels'
folders (auditwheel drops RPATH entries that leave the wheel). Unpacks and repacks with the
`wheel` tool, so that RECORD is rewritten; prints the new wheel's path.

    python packaging/finish_wheel.py WHEEL --out DIR [--local +cu13] [--cuda-libs "nvidia/cu13/lib"]
                                     [--requires "nvidia-cublas>=13.0,<14" ...]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The libraries that link the CUDA libraries, and the way from their folder up to site-packages.
CUDA_USERS = {"cosyfast/lib/libcosyfast_engine.so": "$ORIGIN/../..", "cosyfast/lib/libcosyfast.so": "$ORIGIN/../..",
              "cosyfast/_core.*.so": "$ORIGIN/.."}


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _with_requirements(metadata: str, version: str, requires: list[str]) -> str:
    old = re.search(r"^Version: (.+)$", metadata, re.M)
    if old is None:
        raise SystemExit("finish_wheel.py: METADATA has no Version")
    metadata = metadata[:old.start(1)] + version + metadata[old.end(1):]
    # Headers end at the first blank line (the long description follows); new ones go there.
    head, sep, body = metadata.partition("\n\n")
    lines = head.splitlines()
    have = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")}
    lines += [f"Requires-Dist: {r}" for r in requires if r not in have]
    return "\n".join(lines) + "\n" + (sep[1:] + body if sep else "")


def _add_rpath(elf: Path, up: str, cuda_libs: list[str]) -> None:
    entries = [e for e in _run("patchelf", "--print-rpath", str(elf)).split(":") if e]
    wanted = [f"{up}/{d}" for d in cuda_libs]
    new = entries + [w for w in wanted if w not in entries]
    if new != entries:
        _run("patchelf", "--set-rpath", ":".join(new), str(elf))
    print(f"  RPATH {elf.name}: {':'.join(new)}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--local", default="", help="the version's local part, e.g. +cu13 (empty: none)")
    p.add_argument("--cuda-libs", default="", help="CUDA library folders relative to site-packages, ';'-separated")
    p.add_argument("--requires", action="append", default=[], help="a Requires-Dist line to add (repeatable)")
    args = p.parse_args()
    cuda_libs = [d for d in args.cuda_libs.split(";") if d]
    with tempfile.TemporaryDirectory() as tmp:
        _run(sys.executable, "-m", "wheel", "unpack", "-d", tmp, str(args.wheel))
        (root,) = Path(tmp).iterdir()
        (dist_info,) = root.glob("*.dist-info")
        metadata = (dist_info / "METADATA").read_text(encoding="utf-8")
        old = re.search(r"^Version: (.+)$", metadata, re.M)
        base = old.group(1).split("+")[0] if old else ""
        version = base + args.local
        (dist_info / "METADATA").write_text(_with_requirements(metadata, version, args.requires), encoding="utf-8")
        name = dist_info.name.split("-")[0]
        dist_info.rename(dist_info.with_name(f"{name}-{version}.dist-info"))
        if cuda_libs:
            for pattern, up in CUDA_USERS.items():
                matches = list(root.glob(pattern))
                if not matches:
                    raise SystemExit(f"finish_wheel.py: the wheel has no {pattern}")
                for elf in matches:
                    _add_rpath(elf, up, cuda_libs)
        args.out.mkdir(parents=True, exist_ok=True)
        before = set(args.out.glob("*.whl"))
        _run(sys.executable, "-m", "wheel", "pack", "-d", str(args.out), str(root))
        made = sorted(set(args.out.glob(f"{name}-{version}-*.whl")) - before) or sorted(
            args.out.glob(f"{name}-{version}-*.whl"))
    if not made:
        raise SystemExit("finish_wheel.py: wheel pack wrote no wheel")
    print(made[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
