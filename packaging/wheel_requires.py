"""The requirements a wheel declares for itself (its METADATA's Requires-Dist, extras and other
platforms left out), one per line as pip takes them: packaging/gpu_wheel_check.sh installs them
when pip's resolver cannot finish for reasons outside the wheel.

    python3 packaging/wheel_requires.py WHEEL [--skip NAME ...]
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser


def requires(wheel: str, skip: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise SystemExit(f"{wheel}: expected one .dist-info/METADATA, found {len(names)}")
        meta = Parser().parsestr(z.read(names[0]).decode())
    out = []
    for req in meta.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        if "extra ==" in marker or ("sys_platform" in marker and "linux" not in marker):
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", spec.strip())
        if name is None or re.sub(r"[-_.]+", "-", name.group(0)).lower() in skip:
            continue
        out.append(spec.strip().replace(" ", ""))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel")
    p.add_argument("--skip", nargs="*", default=[], help="distribution names to leave out")
    args = p.parse_args(argv)
    print("\n".join(requires(args.wheel, {re.sub(r"[-_.]+", "-", s).lower() for s in args.skip})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
