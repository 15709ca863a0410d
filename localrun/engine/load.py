"""Loading a model: the context it may have, the offload plan, and the out-of-memory retry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from localrun import backend
from localrun.backend import LoadOptions, Model, context_size
from localrun.backend.llamacpp import offload
from localrun.backend.llamacpp.offload import (
    AUTO,
    GPU,
    ModelSizes,
    Plan,
    memory_key,
    model_sizes,
    remember,
    remembered,
)
from localrun.engine.types import CHAT, COMPLETION
from localrun.errors import OutOfMemoryError
from localrun.files import human_size
from localrun.gguf.reader import read_gguf
from localrun.models.resolve import Settings, resolve


@dataclass
class LoadedModel:
    """A model ready to answer, with what the user called it and how long it took to load."""

    name: str
    path: Path
    model: Model
    load_s: float
    plan: Plan = field(default_factory=lambda: Plan(0, 0, (), None, 0, "no GPU requested"))
    notes: list[str] = field(default_factory=list)  # what loading had to adjust, for people
    template_override: str | None = None  # a Modelfile's TEMPLATE, as Jinja

    @property
    def template(self) -> str | None:
        """The chat template in use: the Modelfile's, else the GGUF's own."""
        return self.template_override or self.model.chat_template

    @property
    def placement(self) -> str:
        """Where the layers run, in short: "CPU" or "GPU 18/19"."""
        return self.plan.placement

    @property
    def mode(self) -> str:
        """``chat`` when the model has a chat template, else plain ``completion``."""
        return CHAT if self.template else COMPLETION

    def close(self) -> None:
        """Free the model."""
        self.model.close()


def load_model(
    ref: str,
    *,
    n_ctx: int | None = None,
    n_threads: int,
    gpu_layers: str | int = AUTO,
    path: Path | None = None,
    settings: Settings | None = None,
    n_seq: int = 1,
) -> LoadedModel:
    """Load a model with as many layers on the GPU(s) as fit (``gpu_layers``: auto, all, N).

    ``n_seq`` sequences share the context's ``n_ctx`` cells (the batching engine's N).

    ``path`` skips resolving ``ref`` again when the caller already did. If a device runs
    out of memory, the load is retried with half the GPU layers, and the count that
    worked is remembered for this model, context and device.
    """
    if path is None:
        resolved = resolve(ref)  # a Hub model must be pulled already
        path, settings = resolved.path, settings or resolved.settings
    settings = settings or Settings()
    start = time.perf_counter()
    notes: list[str] = []
    n_ctx = _fit_context(path, n_ctx, notes)
    plan, memory = _plan(path, n_ctx, gpu_layers)
    layers = plan.n_gpu_layers
    while True:
        options = LoadOptions(
            path=path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=layers,
            tensor_split=plan.split if layers else None,
            lora=settings.adapters,
            n_seq=n_seq,
        )
        try:
            model = backend.load(options)
            break
        except OutOfMemoryError:
            if layers == 0:
                raise
            layers //= 2
            notes.append(f"out of GPU memory: retried with {layers} GPU layers")
    if layers != plan.n_gpu_layers:
        plan = replace(plan, n_gpu_layers=layers, reason="after an out-of-memory retry")
        if memory is not None:
            remember(memory, layers)
            notes.append(f"remembered {layers} GPU layers for this model, context and device")
    elapsed = time.perf_counter() - start
    return LoadedModel(ref, path, model, elapsed, plan, notes, settings.template)


def _fit_context(path: Path, n_ctx: int | None, notes: list[str]) -> int | None:
    """An asked-for context, at most the trained one, and only if its KV cache can fit.

    As Ollama does, a context over the model's trained length is lowered to it, with a
    note. A context whose KV cache alone is larger than the machine's memory is refused
    before llama.cpp tries to allocate it.
    """
    if n_ctx is None:
        return None
    info = read_gguf(path)
    trained = int(info.arch_value("context_length") or 0)
    if trained and n_ctx > trained:
        notes.append(
            f"context lowered from {n_ctx} to {trained} tokens, the most this model was trained for"
        )
        n_ctx = trained
    from localrun.system import physical_memory

    needed = sum(model_sizes(info, n_ctx).kv_per_layer)
    memory = physical_memory()
    if memory and needed > memory:
        raise OutOfMemoryError(
            f"a context of {n_ctx} tokens needs about {human_size(needed)} for its KV cache, "
            f"more than this machine's {human_size(memory)} of memory",
            "use a smaller context (--ctx)",
        )
    return n_ctx


def _plan(path: Path, n_ctx: int | None, request: str | int) -> tuple[Plan, str | None]:
    """The offload plan, and the key under which a working count is remembered."""
    from localrun.backend.llamacpp import devices as gpu

    supported = gpu.supports_offload() if request != 0 else False
    devices = gpu.gpus() if supported else []
    if not devices:
        empty = ModelSizes((), (), 0, 0)
        return offload.plan(empty, [], request, offload_supported=supported or request == 0), None
    info = read_gguf(path)
    ctx = context_size(n_ctx, int(info.arch_value("context_length") or 0))
    targets = [GPU(d.description or d.name, d.free_bytes, d.total_bytes) for d in devices]
    key = memory_key(path, ctx, tuple(t.name for t in targets))
    if request == AUTO and (count := remembered(key)) is not None:
        found = offload.plan(model_sizes(info, ctx), targets, count)
        return replace(found, reason="remembered from an earlier out-of-memory retry"), key
    return offload.plan(model_sizes(info, ctx), targets, request), key
