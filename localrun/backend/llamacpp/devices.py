"""The compute devices llama.cpp can use, from ggml's own backend device registry.

One code path for every backend (CUDA, Metal, ROCm/HIP, Vulkan, SYCL): the devices and
their free and total memory come from ``ggml_backend_dev_*`` in the libggml that
llama-cpp-python loaded, so they are exactly what llama.cpp will offload to.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

from localrun.backend.llamacpp import bindings

bindings.register()

import llama_cpp.llama_cpp as llama_cpp  # noqa: E402

_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    """A device as ggml reports it."""

    name: str
    description: str
    type: str  # cpu, gpu, igpu, accel
    free_bytes: int
    total_bytes: int

    @property
    def is_gpu(self) -> bool:
        return self.type in ("gpu", "igpu")


@cache
def _ggml() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    ggml, base = bindings.load_library("ggml"), bindings.load_library("ggml-base")
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(base, fn).restype = ctypes.c_char_p
        getattr(base, fn).argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    llama_cpp.llama_backend_init()  # registers the backends built into this llama.cpp
    return ggml, base


def devices() -> list[Device]:
    """Every device ggml knows, the CPU included."""
    ggml, base = _ggml()
    found = []
    for i in range(int(ggml.ggml_backend_dev_count())):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                name=(base.ggml_backend_dev_name(dev) or b"?").decode(),
                description=(base.ggml_backend_dev_description(dev) or b"").decode(),
                type=_TYPES.get(int(base.ggml_backend_dev_type(dev)), "other"),
                free_bytes=int(free.value),
                total_bytes=int(total.value),
            )
        )
    return found


def gpus() -> list[Device]:
    """The devices llama.cpp can offload layers to."""
    return [d for d in devices() if d.is_gpu]


def supports_offload() -> bool:
    """Whether this llama.cpp build has any GPU backend at all."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def system_info() -> str:
    """llama.cpp's one-line description of the CPU features it was built for."""
    return bytes(llama_cpp.llama_print_system_info()).decode().strip()
