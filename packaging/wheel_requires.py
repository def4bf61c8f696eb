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

from torch_only_site import linux_requirement, normalized  # this folder's: the same reading of requirements


def requires(wheel: str, skip: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise SystemExit(f"{wheel}: expected one .dist-info/METADATA, found {len(names)}")
        meta = Parser().parsestr(z.read(names[0]).decode())
    wanted = [r for r in map(linux_requirement, meta.get_all("Requires-Dist") or []) if r is not None]
    return [spec.replace(" ", "") for name, spec in wanted if name not in skip]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel")
    p.add_argument("--skip", nargs="*", default=[], help="distribution names to leave out")
    args = p.parse_args(argv)
    print("\n".join(requires(args.wheel, {normalized(s) for s in args.skip})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
