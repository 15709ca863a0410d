"""Print the CMake arguments localrun builds llama.cpp with (read by pip as CMAKE_ARGS).

llama-cpp-python compiles llama.cpp for the machine it installs on (``-march=native``). Two
flags are added:

- On x86-64, llama.cpp's AMX kernels are left out. ``-march=native`` turns them on wherever
  the CPU advertises AMX; on virtual machines that advertise it without keeping the tile state
  (seen on Firecracker VMs), the first matrix product then dies of SIGILL. llama.cpp then uses
  its AVX-512/AVX2 kernels, which every other x86-64 build already uses. Elsewhere (ARM, Apple)
  nothing is added.
- Everywhere, llama.cpp's RPC backend is built (``-DGGML_RPC=ON``): ``localrun worker`` and
  ``--rpc`` split a model's layers across machines with it. It adds a small library and costs
  nothing until a worker is named.

``benchmarks/llama_tools.py`` builds llama.cpp's own tools with the same flags, so that both
sides run the same kernels.

pip's wheel cache does not tell builds with different CMake flags apart: a llama-cpp-python
wheel cached before RPC was turned on would be installed again without it.
``python3 scripts/cmake_args.py --drop-stale-wheels`` removes such wheels from pip's cache (CI
runs it before installing), so the next install compiles one with RPC.

GPU backends are llama.cpp's own CMake switches, added to the flags above:

- Vulkan (AMD, Intel and NVIDIA cards, and Mesa's lavapipe on the CPU): ``--vulkan`` adds
  ``-DGGML_VULKAN=ON`` and puts ``scripts/vulkan_compat`` first on the C++ include path, so
  that Vulkan headers older than 1.3.272 (Debian 12's 1.3.239) compile llama.cpp's Vulkan
  backend too (see the header there). Needs the Vulkan headers and loader and ``glslc``
  (Debian: ``libvulkan-dev glslc spirv-headers``; a driver, e.g. ``mesa-vulkan-drivers``).
- CUDA (NVIDIA): add ``-DGGML_CUDA=ON`` (needs the CUDA toolkit's ``nvcc``).
- ROCm (AMD): add ``-DGGML_HIP=ON`` (needs ROCm's ``hipcc``; see llama.cpp's docs/build.md).
- Metal (Apple): on by default in llama.cpp's macOS builds (``-DGGML_METAL=ON``).

For example: ``CMAKE_ARGS="$(python3 scripts/cmake_args.py --vulkan)" pip install ...``, or
``CMAKE_ARGS="$(python3 scripts/cmake_args.py) -DGGML_CUDA=ON" pip install ...``.
pip's wheel cache does not tell these builds apart either: install such a build with
``--no-cache-dir`` (or into its own environment) so the CPU-only install does not pick it up.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import zipfile
from pathlib import Path

NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
RPC = "-DGGML_RPC=ON"
RPC_LIBRARY = "libggml-rpc"  # what a wheel built with RPC holds (.so, .dylib or .dll)
VULKAN = "-DGGML_VULKAN=ON"
VULKAN_COMPAT = Path(__file__).resolve().parent / "vulkan_compat"  # holds vulkan/vulkan.hpp
USAGE = "usage: cmake_args.py [--vulkan | --drop-stale-wheels]"


def cmake_flags(machine: str | None = None, vulkan: bool = False) -> list[str]:
    """The CMake ``-D`` flags for a machine as ``platform.machine()`` names it; ``vulkan``
    adds llama.cpp's Vulkan backend."""
    x86 = (machine or platform.machine()).lower() in ("x86_64", "amd64")
    cxx = [NO_AMX] if x86 else []
    if vulkan:
        cxx.append(f"-I{VULKAN_COMPAT}")  # only files including <vulkan/vulkan.hpp> notice it
    flags = [f"-DCMAKE_C_FLAGS={NO_AMX}"] if x86 else []
    if cxx:
        flags.append(f"-DCMAKE_CXX_FLAGS={' '.join(cxx)}")
    flags.append(RPC)
    return [*flags, VULKAN] if vulkan else flags


def pip_wheel_cache() -> Path:
    """Where pip keeps the wheels it built (``pip cache dir`` + ``wheels``), found without pip."""
    if os.environ.get("PIP_CACHE_DIR"):
        base = Path(os.environ["PIP_CACHE_DIR"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "pip"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home())) / "pip" / "Cache"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"
    return base / "wheels"


def stale_wheels(cache: Path) -> list[Path]:
    """Cached llama-cpp-python wheels that were built without the RPC backend."""
    stale = []
    for wheel in sorted(cache.rglob("llama_cpp_python-*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = zf.namelist()
        except (OSError, zipfile.BadZipFile):
            stale.append(wheel)  # unreadable: pip could not use it either
            continue
        if not any(Path(name).name.startswith(RPC_LIBRARY) for name in names):
            stale.append(wheel)
    return stale


def main(argv: list[str]) -> int:
    if argv == ["--drop-stale-wheels"]:
        for wheel in stale_wheels(pip_wheel_cache()):
            wheel.unlink()
            print(f"removed {wheel.name} from pip's cache: built without llama.cpp's RPC backend")
        return 0
    if argv not in ([], ["--vulkan"]):
        print(USAGE, file=sys.stderr)
        return 2
    print(shlex.join(cmake_flags(vulkan=argv == ["--vulkan"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
