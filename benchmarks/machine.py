"""What machine a benchmark ran on: a figure from one CPU is no claim about another.

Every benchmark prints :func:`describe` first, and ``docs/performance.md`` keeps a table per
machine seen, headed by this line.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

# The instruction sets that decide which of ggml's CPU kernels run.
_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu() -> str:
    """The CPU's model name, its usable cores, and the flags ggml's kernels care about."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    have = [f for f in _FLAGS if f in flags]
    return f"{name}, {cores} cores, {' '.join(have) or 'none of ' + '/'.join(_FLAGS[:3])}"


def llama_cpp_build() -> str:
    """llama-cpp-python's version and what its llama.cpp was built with."""
    from localrun.backend.llamacpp.devices import system_info

    version = importlib.metadata.version("llama-cpp-python")
    return f"llama-cpp-python {version}: {system_info()}"


def describe() -> str:
    """Two lines: the machine, and the llama.cpp build."""
    return f"machine: {cpu()}\nllama.cpp: {llama_cpp_build()}"


if __name__ == "__main__":
    print(describe())
