"""llama.cpp's own tools (llama-bench, llama-batched-bench, llama-server), built once from the
pinned sdist.

The same llama.cpp source that llama-cpp-python vendors, built with the flags its CMakeLists
sets (Release, no curl) and localrun's own from ``scripts/cmake_args.py``, cached in
``benchmarks/.cache``, so that a benchmark compares localrun with llama.cpp on equal terms.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"


def build_tool(target: str, cache: Path = CACHE, *, vulkan: bool = False) -> Path:
    """The binary of a llama.cpp tool (``llama-bench``, ``llama-batched-bench``,
    ``llama-server``), built once under ``cache`` (the tests keep theirs outside the clone);
    ``vulkan`` builds it with the Vulkan backend, as ``scripts/cmake_args.py --vulkan`` does."""
    version = importlib.metadata.version("llama-cpp-python")
    build = cache / f"llama.cpp-{version}" / ("build-vulkan" if vulkan else "build-no-amx")
    binary = build / "bin" / target
    if binary.exists():
        return binary
    source = build.parent / "src"
    if not source.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                 "llama-cpp-python", f"llama-cpp-python=={version}", "-d", tmp, "-q"],
                check=True,
            )  # fmt: skip
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                for m in members:
                    m.name = m.name[len(prefix) :]
                tar.extractall(source, members=[m for m in members if m.name], filter="data")
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=ON",  # llama-server, for serve_load.py (without its web UI)
        "-DLLAMA_BUILD_UI=OFF",
        *_localrun_cmake_flags(vulkan),
    ]
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", target, "-j", jobs], check=True)
    return binary


def _localrun_cmake_flags(vulkan: bool = False) -> list[str]:
    """The flags localrun's own install builds llama.cpp with (scripts/cmake_args.py)."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "cmake_args.py"))
    flags: list[str] = script["cmake_flags"](vulkan=vulkan)
    return flags


def tool_for(model: str, target: str, *, vulkan: bool = False) -> tuple[Path, Path] | None:
    """The built tool and the GGUF path of a localrun model name; None (said why) without cmake."""
    if shutil.which("cmake") is None:
        print(f"cmake is needed to build {target}", file=sys.stderr)
        return None
    binary = build_tool(target, vulkan=vulkan)
    shown = subprocess.run(
        [sys.executable, "-m", "localrun", "show", model, "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return binary, Path(json.loads(shown)["path"])
