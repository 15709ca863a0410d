"""What `localrun doctor` reports: the llama.cpp build, devices, threads, cache, versions."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass

from localrun import __version__, paths
from localrun.backend.llamacpp import devices as gpu
from localrun.backend.llamacpp.offload import budget
from localrun.hub import store
from localrun.system import physical_cores

PACKAGES = ("llama-cpp-python", "huggingface-hub", "typer", "rich", "platformdirs", "jinja2")


@dataclass(frozen=True)
class Report:
    localrun: str
    llama_cpp: str
    system_info: str
    gpu_offload: bool  # the build has a GPU backend (see ``devices`` for one it found)
    gpu_budget: int | None  # LOCALRUN_GPU_MEMORY: the most a load plans on each GPU
    rpc: bool  # llama.cpp's RPC backend: localrun worker and --rpc
    devices: list[dict[str, object]]
    threads: int
    logical_cpus: int
    cache_dir: str
    cache_bytes: int
    packages: dict[str, str]
    parallel_demo: int | None  # --batch's default --parallel for the demo model, if installed
    kv_demo: dict[str, int] | None  # the demo model's KV cache at its default context, by type
    context_demo: tuple[int, str] | None  # the demo model's default context here, and why

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> Report:
    """Inspect this machine and this installation."""
    return Report(
        localrun=__version__,
        llama_cpp=_version("llama-cpp-python"),
        system_info=gpu.system_info(),
        gpu_offload=gpu.supports_offload(),
        gpu_budget=budget(),
        rpc=gpu.supports_rpc(),
        devices=[
            {
                "name": d.name,
                "description": d.description,
                "type": d.type,
                "free_bytes": d.free_bytes,
                "total_bytes": d.total_bytes,
            }
            for d in gpu.devices()
        ],
        threads=physical_cores(),
        logical_cpus=os.cpu_count() or 1,
        cache_dir=str(paths.cache_dir()),
        cache_bytes=store.disk_usage().total_bytes,
        packages={p: _version(p) for p in PACKAGES},
        parallel_demo=_parallel_demo(),
        kv_demo=_kv_demo(),
        context_demo=_context_demo(),
    )


def _kv_demo() -> dict[str, int] | None:
    """The demo model's KV cache for its default context, in each type (the planner's sizes,
    which are llama.cpp's)."""
    from localrun.backend import KV_TYPES
    from localrun.backend.llamacpp.offload import model_sizes
    from localrun.gguf.reader import read_gguf
    from localrun.models.demo import cached_demo_path

    path, chosen = cached_demo_path(), _context_demo()
    if path is None or chosen is None:
        return None
    info = read_gguf(path)
    return {t: sum(model_sizes(info, chosen[0], t).kv_per_layer) for t in KV_TYPES}


def _context_demo() -> tuple[int, str] | None:
    """The demo model's default context on this machine now (one sequence, f16), and why."""
    from localrun.engine.context import default_context
    from localrun.gguf.reader import read_gguf
    from localrun.models.demo import cached_demo_path

    path = cached_demo_path()
    if path is None:
        return None
    chosen = default_context(read_gguf(path))
    return chosen.n_ctx, chosen.reason


def _parallel_demo() -> int | None:
    from localrun.engine.load import default_parallel
    from localrun.models.demo import cached_demo_path

    path = cached_demo_path()  # not assembled here: doctor only looks
    return default_parallel(path, None) if path is not None else None
