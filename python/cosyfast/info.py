"""`cosyfast info`: what a bug report needs (the build, the engines, CUDA and GPUs, versions).

Every probe is guarded: a missing or broken torch, lmdeploy, CUDA or even extension is reported,
never raised, so the command prints something useful on any machine.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from typing import Any

NO_CUDA = "no CUDA"


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_version(name: str) -> str:
    """The version of the module as imported here, or why it could not be imported."""
    try:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except Exception as e:  # noqa: BLE001 - a broken install is what we report
        return f"not importable ({_error(e)})"


def _build() -> tuple[dict[str, Any], Any]:
    try:
        from . import _core

        return dict(_core.build_info()), _core
    except Exception as e:  # noqa: BLE001
        return {"error": f"cosyfast._core not importable ({_error(e)})"}, None


def _driver_cuda_version() -> str | None:
    """The CUDA version the driver supports (cuDriverGetVersion), without torch."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
        return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except (OSError, AttributeError):
        return None


def _nvidia_smi() -> list[dict[str, Any]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-gpu=index,name,memory.total,driver_version"
    out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    gpus = []
    for line in out.strip().splitlines():
        index, name, mem_mib, driver = (f.strip() for f in line.split(","))
        gpus.append(dict(index=int(index), name=name, memory_gib=round(int(mem_mib) / 1024, 1), driver=driver))
    return gpus


def _cuda() -> dict[str, Any]:
    """CUDA runtime and driver versions and the GPUs: through torch if it sees CUDA, else nvidia-smi."""
    info: dict[str, Any] = dict(available=False, source=None, torch_cuda_runtime=None, driver=None,
                                driver_cuda=_driver_cuda_version(), gpus=[], notes=[])
    try:
        import torch

        info["torch_cuda_runtime"] = torch.version.cuda
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            available = bool(torch.cuda.is_available())
        info["notes"] += [str(w.message) for w in caught]
        if available:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["gpus"].append(dict(index=i, name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                                         capability=f"{p.major}.{p.minor}"))
            info.update(available=True, source="torch")
        elif torch.version.cuda is None:
            info["notes"].append(f"torch {torch.__version__} is built without CUDA")
    except Exception as e:  # noqa: BLE001
        info["notes"].append(f"torch CUDA probe failed ({_error(e)})")
    try:
        smi = _nvidia_smi()
        if smi is None:
            info["notes"].append("nvidia-smi not on PATH")
        else:
            info["driver"] = smi[0]["driver"] if smi else None
            if not info["gpus"]:
                info["gpus"] = [{k: v for k, v in g.items() if k != "driver"} for g in smi]
                info["source"] = "nvidia-smi"
    except Exception as e:  # noqa: BLE001
        info["notes"].append(f"nvidia-smi failed ({_error(e)})")
    return info


# The shared libraries worth naming in a bug report: the engine library and the CUDA libraries it
# loaded (a wheel finds them in the nvidia-* packages by RPATH; a source build in its toolkit).
_LIBRARIES = ("libcosyfast_engine.so", "libcudart.so", "libcublas.so", "libcublasLt.so", "libcuda.so")


def _libraries() -> dict[str, str]:
    """Where each of _LIBRARIES was loaded from in this process (Linux: /proc/self/maps), after _core."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                name = os.path.basename(path)
                for lib in _LIBRARIES:
                    if name.startswith(lib) and lib not in found:
                        found[lib] = path
    except OSError:
        pass
    return found


def _engines(build: dict[str, Any], core: Any, cuda: dict[str, Any]) -> dict[str, Any]:
    cpu_ok = core is not None and hasattr(core, "CpuQwen2Engine")
    engines: dict[str, Any] = {"cpu": dict(available=cpu_ok, reasons=[] if cpu_ok else [build.get("error", "missing")])}
    reasons = []
    if core is None or not (build.get("with_turbomind") or hasattr(core, "TurboMindEngine")):
        reasons.append("not compiled in (install a +cu12/+cu13 wheel, packaging/README.md, or build with "
                       "-C cmake.define.COSYFAST_TURBOMIND=ON)")
    else:
        try:  # the check engine="auto" makes: the engine compiled in, its bound modules
            from . import turbomind

            turbomind.check_turbomind()
        except Exception as e:  # noqa: BLE001
            reasons.append(str(e))
    if not cuda["available"]:
        reasons.append("no CUDA GPU visible to torch")
    engines["turbomind"] = dict(available=not reasons, reasons=reasons)
    engines["auto"] = "turbomind" if not reasons else "cpu" if cpu_ok else None
    return engines


def collect() -> dict[str, Any]:
    """Everything `cosyfast info` reports, as plain JSON-able data."""
    from . import __version__

    build, core = _build()
    cuda = _cuda()
    return dict(
        cosyfast=__version__,
        build=build,
        engines=_engines(build, core, cuda),
        cuda=cuda,
        libraries=_libraries(),
        versions=dict(python=f"{platform.python_version()} ({platform.python_implementation()})",
                      torch=_module_version("torch"), numpy=_module_version("numpy"),
                      lmdeploy=_dist_version("lmdeploy") or "not installed"),
        platform=platform.platform(),
        machine=platform.machine(),
    )


def format_text(info: dict[str, Any]) -> str:
    b, c, v = info["build"], info["cuda"], info["versions"]
    lines = [f"cosyfast {info['cosyfast']}"]
    if "error" in b:
        lines.append(f"build: {b['error']}")
    else:
        openmp = f"on ({b['openmp_version']})" if b["openmp"] else "off"
        lines.append(f"build: {b['compiler']}, {b['cxx_standard']}, {b['build_type']}, OpenMP {openmp}, "
                     f"TurboMind compiled in: {'yes' if b['with_turbomind'] else 'no'}"
                     f" (lmdeploy {b['lmdeploy_version'] or '-'}), pybind11 {b['pybind11_version']}")
    lines.append("engines:")
    for name in ("cpu", "turbomind"):
        e = info["engines"][name]
        lines.append(f"  {name:<10} " + ("available" if e["available"] else "not available: " + "; ".join(e["reasons"])))
    lines.append(f"  engine='auto' picks {info['engines']['auto'] or 'nothing (no engine available)'}")
    if c["gpus"]:
        lines.append(f"CUDA: torch runtime {c['torch_cuda_runtime'] or '-'}, driver {c['driver'] or '-'} "
                     f"(CUDA {c['driver_cuda'] or '-'}), GPUs via {c['source']}:")
        lines += [f"  {g['index']}: {g['name']}, {g['memory_gib']} GiB"
                  + (f", sm {g['capability']}" if "capability" in g else "") for g in c["gpus"]]
    else:
        lines.append(f"CUDA: {NO_CUDA}" + (f" (driver CUDA {c['driver_cuda']})" if c["driver_cuda"] else ""))
    lines += [f"  note: {n}" for n in c["notes"]]
    if info["libraries"]:
        lines.append("libraries: " + ", ".join(f"{lib} {path}" for lib, path in info["libraries"].items()))
    lines.append(f"Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, lmdeploy {v['lmdeploy']}")
    lines.append(f"platform: {info['platform']}")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    info = collect()
    try:
        print(json.dumps(info, indent=2) if as_json else format_text(info), flush=True)
    except BrokenPipeError:  # `cosyfast info | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
