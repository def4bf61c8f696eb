"""A folder that shows a Python only torch and what torch requires (the nvidia-* packages, triton,
sympy, ...): links to those distributions' files and metadata in the site-packages where torch is
installed. A fresh venv with a .pth pointing at it imports torch as installed, and pip counts
those distributions as installed (so a wheel requiring nvidia-cublas is checked against torch's),
while nothing else of that site-packages is visible (packaging/gpu_wheel_check.sh).

    python3 packaging/torch_only_site.py DEST      # prints the source folder, then each distribution

`DEST ROOT... --skip NAME...` links other distributions' closures instead (the GPU tests' own
requirements, transformers and scipy, for the test step only), leaving out the named ones.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def linux_requirement(req: str) -> tuple[str, str] | None:
    """(the normalized name, the specifier as written) of one Requires-Dist line, or None for a
    requirement of an extra or of another platform."""
    spec, _, marker = req.partition(";")
    if "extra ==" in marker or ("sys_platform" in marker and "linux" not in marker):
        return None
    name = re.match(r"[A-Za-z0-9_.\-]+", spec.strip())
    return None if name is None else (normalized(name.group(0)), spec.strip())


def _closure(roots: list[str], skip: set[str]) -> list[md.Distribution]:
    """The roots and their requirements, recursively (requirements of extras and of other platforms,
    and the distributions in `skip`, left out)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = normalized(todo.pop())
        if name in seen or name in skip:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or other-platform requirement, absent here
        seen[name] = dist
        todo += [r[0] for r in map(linux_requirement, dist.requires or []) if r is not None]
    return list(seen.values())


def main() -> int:
    args = sys.argv[1:]
    skip = {normalized(n) for n in args[args.index("--skip") + 1:]} if "--skip" in args else set()
    args = args[:args.index("--skip")] if "--skip" in args else args
    dest, roots = Path(args[0]), args[1:] or ["torch"]
    dest.mkdir(parents=True, exist_ok=True)
    dists = _closure(roots, skip)
    if not dists:
        print(f"{roots} not installed in this Python", file=sys.stderr)
        return 1
    print(Path(str(dists[0].locate_file(""))))
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src, link = Path(str(dist.locate_file(top))), dest / top
            if src.exists() and not link.exists() and top not in ("__pycache__", "bin"):
                link.symlink_to(src)
        print(f"{dist.metadata['Name']} {dist.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
