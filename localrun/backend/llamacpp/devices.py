"""The compute devices llama.cpp can use, from ggml's own backend device registry.

One code path for every backend (CUDA, Metal, ROCm/HIP, Vulkan, SYCL, and RPC workers on
other machines): the devices and their free and total memory come from ``ggml_backend_dev_*``
in the libggml that llama-cpp-python loaded, so they are exactly what llama.cpp will offload to.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

from localrun.backend.llamacpp import bindings, logs

bindings.register()

import llama_cpp.llama_cpp as llama_cpp  # noqa: E402

_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
RPC = "RPC"  # the registry of llama.cpp's RPC backend: devices of other machines
NOT_GPU_BACKENDS = ("CPU", RPC, "BLAS")  # registries that bring no local GPU


@dataclass(frozen=True)
class Device:
    """A device as ggml reports it."""

    name: str
    description: str  # an RPC device's is its worker's HOST:PORT
    type: str  # cpu, gpu, igpu, accel
    free_bytes: int
    total_bytes: int
    backend: str = ""  # the ggml backend registry it belongs to: CPU, CUDA, Metal, RPC...

    @property
    def is_gpu(self) -> bool:
        return self.type in ("gpu", "igpu")

    @property
    def remote(self) -> bool:
        """A device of an RPC worker on another machine (or another process)."""
        return self.backend == RPC


@cache
def _ggml() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    ggml, base = bindings.load_library("ggml"), bindings.load_library("ggml-base")
    for lib, fn in ((ggml, "ggml_backend_dev_count"), (ggml, "ggml_backend_reg_count")):
        getattr(lib, fn).restype = ctypes.c_size_t
    for fn in ("ggml_backend_dev_get", "ggml_backend_reg_get"):
        getattr(ggml, fn).restype = ctypes.c_void_p
        getattr(ggml, fn).argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description", "ggml_backend_reg_name"):
        getattr(base, fn).restype = ctypes.c_char_p
        getattr(base, fn).argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    # Registering the backends logs (Vulkan lists its devices): into localrun's log, which
    # LOCALRUN_DEBUG=1 shows, not onto the user's screen.
    logs.reclaim()
    llama_cpp.llama_backend_init()  # registers the backends built into this llama.cpp
    return ggml, base


def describe(dev: int) -> Device:
    """The :class:`Device` of a ``ggml_backend_dev_t``."""
    _, base = _ggml()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    reg = base.ggml_backend_dev_backend_reg(dev)
    return Device(
        name=(base.ggml_backend_dev_name(dev) or b"?").decode(),
        description=(base.ggml_backend_dev_description(dev) or b"").decode(),
        type=_TYPES.get(int(base.ggml_backend_dev_type(dev)), "other"),
        free_bytes=int(free.value),
        total_bytes=int(total.value),
        backend=(base.ggml_backend_reg_name(reg) or b"").decode() if reg else "",
    )


def handles() -> list[int]:
    """Every ``ggml_backend_dev_t`` ggml knows, in its order."""
    ggml, _ = _ggml()
    return [ggml.ggml_backend_dev_get(i) for i in range(int(ggml.ggml_backend_dev_count()))]


def devices() -> list[Device]:
    """Every device ggml knows, the CPU included."""
    return [describe(dev) for dev in handles()]


def gpus() -> list[Device]:
    """The devices llama.cpp offloads layers to, in the order it uses them (and in which a
    tensor split is given): RPC workers' first, then the GPUs, then the integrated GPUs when
    there is no other GPU."""
    found = devices()
    remote = [d for d in found if d.remote]
    discrete = [d for d in found if d.type == "gpu" and not d.remote]
    integrated = [d for d in found if d.type == "igpu"]
    # Integrated GPUs only without a discrete one, and of one backend (seen by several).
    same = [d for d in integrated if d.backend == integrated[0].backend] if integrated else []
    return remote + discrete + (same if not discrete else [])


# Drivers that llama.cpp's flash-attention kernels crash: Mesa's lavapipe (a Vulkan device
# named "llvmpipe ...") of Mesa 22.3, Debian 12's, dies in its own queue thread (SIGSEGV in
# libvulkan_lvp.so) on the first decode. It runs on the CPU, which flash attention would not
# speed up anyway.
FLASH_ATTN_CRASHES = ("llvmpipe",)


def flash_attn_crashes() -> str | None:
    """The description of a local GPU llama.cpp offloads to whose driver flash attention
    crashes, or None."""
    return next(
        (d.description for d in gpus()
         if not d.remote and d.description.startswith(FLASH_ATTN_CRASHES)),
        None,
    )  # fmt: skip


def backends() -> list[str]:
    """The names of the backend registries built into this llama.cpp (CPU, CUDA, RPC...)."""
    ggml, base = _ggml()
    count = int(ggml.ggml_backend_reg_count())
    return [(base.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)) or b"").decode()
            for i in range(count)]  # fmt: skip


def supports_offload() -> bool:
    """Whether this llama.cpp build has a backend for a local GPU (RPC's do not count)."""
    return any(name not in NOT_GPU_BACKENDS for name in backends())


def supports_rpc() -> bool:
    """Whether this llama.cpp build has the RPC backend (``-DGGML_RPC=ON``)."""
    return RPC in backends()


def cpu_buffer_type() -> int:
    """The CPU's ``ggml_backend_buffer_type_t``: where a tensor overridden to the CPU goes."""
    ggml, base = _ggml()
    base.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    base.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    return int(base.ggml_backend_dev_buffer_type(ggml.ggml_backend_dev_by_type(0)))


def system_info() -> str:
    """llama.cpp's one-line description of the CPU features it was built for."""
    return bytes(llama_cpp.llama_print_system_info()).decode().strip()
