"""Print the CMake arguments localrun builds llama.cpp with (read by pip as CMAKE_ARGS).

llama-cpp-python compiles llama.cpp for the machine it installs on (``-march=native``). On
x86-64, that turns on llama.cpp's AMX kernels wherever the CPU advertises AMX; on virtual
machines that advertise it without keeping the tile state (seen on Firecracker VMs), the
first matrix product then dies of SIGILL. The AMX instructions are left out; llama.cpp then
uses its AVX-512/AVX2 kernels, which every other x86-64 build already uses. Elsewhere
(ARM, Apple) nothing is added. ``benchmarks/vs_llama_bench.py`` builds llama-bench with the
same flags, so that both sides run the same kernels.
"""

from __future__ import annotations

import platform
import shlex

NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_flags(machine: str | None = None) -> list[str]:
    """The CMake ``-D`` flags for a machine as ``platform.machine()`` names it."""
    if (machine or platform.machine()).lower() in ("x86_64", "amd64"):
        return [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return []


if __name__ == "__main__":
    print(shlex.join(cmake_flags()))
