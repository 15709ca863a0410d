"""Loading a model: the context it may have, the offload plan, and the out-of-memory retry.

A loaded model only loads; the batching engine over it belongs to its runner
(:mod:`localrun.engine.runner`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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
from localrun.errors import ModelLoadError, OutOfMemoryError
from localrun.files import human_size
from localrun.gguf.reader import read_gguf
from localrun.models.resolve import Settings, resolve

if TYPE_CHECKING:
    from localrun.backend.llamacpp.rpc import Endpoint


class Owner(Protocol):
    """What runs on a loaded model and must stop before the model is freed."""

    def stop(self) -> None: ...


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
    n_seq: int = 1  # sequences the context holds (the batching engine's N)
    # The sequences share one cache, each may use all of it (a default context, as
    # llama-server's unified cache); else each has its share, n_ctx // n_seq (as Ollama).
    shared: bool = False
    prompt_cache: bool = True  # keep evaluated prefixes on disk, and read them back
    speculate: int = 0  # speculative decoding: the most guesses a step (0: off)
    draft: LoadedModel | None = None  # the draft model that guesses (None: prompt lookup)
    context_reason: str | None = None  # why a default context is that long (None: asked for)
    # What runs on this model (a runner's engine, engine.runner): stopped first by close().
    owner: Owner | None = field(default=None, repr=False, compare=False)

    @property
    def seq_ctx(self) -> int:
        """The context each sequence may use: all of a shared cache, else its share."""
        return self.model.n_ctx if self.shared else self.model.n_ctx // self.n_seq

    @property
    def template(self) -> str | None:
        """The chat template in use: the Modelfile's, else the GGUF's own."""
        return self.template_override or self.model.chat_template

    @property
    def placement(self) -> str:
        """Where the layers run, in short: "CPU" or "GPU 18/19"."""
        return self.plan.placement

    @property
    def kv_cache(self) -> str:
        """The KV cache's size as llama.cpp allocated it, and its type ("" when unknown)."""
        size = int(getattr(self.model, "kv_bytes", 0) or 0)
        if not size:
            return ""
        return f"{human_size(size)} {getattr(self.model, 'kv_type', 'f16')}"

    @property
    def projector(self) -> Path | None:
        """A vision model's projector file, loaded beside it (None: a text model)."""
        found = getattr(self.model, "projector", None)
        return found if isinstance(found, Path) else None

    @property
    def mode(self) -> str:
        """``chat`` when the model has a chat template, else plain ``completion``."""
        return CHAT if self.template else COMPLETION

    def close(self) -> None:
        """Stop what runs on the model (its engine, after its current step), then free it."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.stop()
        if self.draft is not None:
            self.draft.close()
            self.draft = None
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
    workers: tuple[Endpoint, ...] = (),
    repack: bool = True,
    kv_type: str = "f16",
    flash_attn: str = "auto",
    shared: bool = False,
    cpu_moe: int = 0,
) -> LoadedModel:
    """Load a model with as many layers on the GPU(s) as fit (``gpu_layers``: auto, all, N).

    ``workers`` (llama.cpp RPC workers) join this machine's devices first: the plan shares
    the layers with them. ``repack`` False keeps the CPU's weights in the file's layout.
    ``kv_type`` (f16, q8_0, q4_0) is the KV cache's type; the plan counts it at that size.

    ``n_seq`` sequences of ``n_ctx`` tokens each (the batching engine's N) share one KV cache
    of ``n_seq * n_ctx`` cells, as Ollama's parallel requests do. Without ``n_ctx`` (or with
    ``shared``), the cache holds the default context (engine/context.py), or ``n_ctx``, once,
    and each sequence may use all of it, as llama-server's unified cache does.

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
    projector = settings.projector.stat().st_size if settings.projector else 0
    per_seq, why = sequence_context(path, n_ctx, n_seq, kv_type, projector)
    shared = shared or n_ctx is None
    n_ctx = _fit_context(path, per_seq, notes, 1 if shared else n_seq, kv_type)
    if workers:
        from localrun.engine.workers import connect

        connect(workers)
    plan, memory = _plan(path, n_ctx, gpu_layers, kv_type, settings.projector, cpu_moe)
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
            repack=repack,
            kv_type=kv_type,
            flash_attn=flash_attn,
            projector=settings.projector,
            cpu_moe=cpu_moe,
        )
        try:
            model = backend.load(options)
            break
        except OutOfMemoryError:
            if layers == 0:
                raise
            layers //= 2
            notes.append(f"out of GPU memory: retried with {layers} GPU layers")
            continue
        except ModelLoadError as e:
            # A device without flash attention cannot hold a quantized cache: f16 instead.
            if kv_type == "f16" or flash_attn != "auto" or "flash_attn" not in e.message:
                raise
            notes.append(f"this device cannot run a {kv_type} KV cache (no flash attention "
                         "for it here): f16 instead")  # fmt: skip
            kv_type = "f16"
    if layers != plan.n_gpu_layers:
        plan = replace(plan, n_gpu_layers=layers, reason="after an out-of-memory retry")
        if memory is not None:
            remember(memory, layers)
            notes.append(f"remembered {layers} GPU layers for this model, context and device")
    elapsed = time.perf_counter() - start
    return LoadedModel(
        ref, path, model, elapsed, plan, notes, settings.template, n_seq,
        shared=shared and n_seq > 1, context_reason=why,
    )  # fmt: skip


LOOKUP_K = 8  # prompt lookup: the most guesses checked a step
DRAFT_K = 8  # a draft model: the most guesses a step (it stops sooner where it is unsure)


def speculate(
    loaded: LoadedModel,
    method: str,
    draft: tuple[str, Path] | None = None,
    *,
    n_threads: int,
    gpu_layers: str | int = AUTO,
) -> None:
    """Set how ``loaded`` guesses ahead: ``lookup``, ``draft`` (``draft`` is the draft
    model's name and file: loaded beside it, with a context as long as each of its
    sequences', its layers on the GPU as they fit) or ``off``."""
    if loaded.draft is not None:
        loaded.draft.close()
        loaded.draft = None
    loaded.speculate = {"lookup": LOOKUP_K, "draft": DRAFT_K}.get(method, 0)
    if method != "draft":
        return
    assert draft is not None, "speculative decoding with a draft model needs one"
    from localrun.engine.draft import check_vocabulary

    name, path = draft
    found = load_model(
        name,
        n_ctx=loaded.seq_ctx,
        n_threads=n_threads,
        gpu_layers=gpu_layers,
        path=path,
        n_seq=loaded.n_seq,
        shared=loaded.shared,
    )
    try:
        check_vocabulary(loaded.model, found.model, name)
    except BaseException:
        found.close()
        raise
    loaded.notes += [f"draft model {name}: {note}" for note in found.notes]
    loaded.draft = found


def sequence_context(
    path: Path, n_ctx: int | None, n_seq: int = 1, kv_type: str = "f16", extra: int = 0
) -> tuple[int, str | None]:
    """Each sequence's context: ``n_ctx`` where asked, else the default that fits this
    machine (engine/context.py), which ``n_seq`` sequences share; and why that long (None
    where asked)."""
    if n_ctx is not None:
        return n_ctx, None
    from localrun.engine.context import default_context

    chosen = default_context(read_gguf(path), kv_type, extra=extra)
    share = f"; its {n_seq} sequences share it, each may use all of it" if n_seq > 1 else ""
    return chosen.n_ctx, chosen.reason + share


def _fit_context(
    path: Path, n_ctx: int, notes: list[str], n_seq: int = 1, kv_type: str = "f16"
) -> int:
    """The whole context to make: ``n_seq`` sequences of ``n_ctx`` tokens each.

    As Ollama does, a context over the model's trained length is lowered to it, with a
    note. A KV cache (all sequences') larger than the machine's memory is refused before
    llama.cpp tries to allocate it.
    """
    info = read_gguf(path)
    trained = int(info.arch_value("context_length") or 0)
    if trained and n_ctx > trained:
        notes.append(
            f"context lowered from {n_ctx} to {trained} tokens, the most this model was trained for"
        )
        n_ctx = trained
    from localrun.system import physical_memory

    total = context_size(n_ctx, trained) * n_seq
    needed = sum(model_sizes(info, total, kv_type).kv_per_layer)
    memory = physical_memory()
    if memory and needed > memory:
        sequences = f" ({n_seq} sequences of {context_size(n_ctx, trained)})" if n_seq > 1 else ""
        raise OutOfMemoryError(
            f"a context of {total} tokens{sequences} needs about {human_size(needed)} for its "
            f"KV cache, more than this machine's {human_size(memory)} of memory",
            "use a smaller context (--ctx)" + (" or fewer --parallel" if n_seq > 1 else ""),
        )
    return total


MAX_DEFAULT_PARALLEL = 8  # past 8, a CPU's aggregate decode gains little (docs/performance.md)


def default_parallel(path: Path, n_ctx: int | None, kv_type: str = "f16") -> int:
    """How many sequences to run at once when none is asked for: as many as half of this
    machine's memory holds, after the weights, each with its own context's KV cache, at most
    ``MAX_DEFAULT_PARALLEL``. Where no context is asked for, each is counted at the least a
    default context is (the default then grows into the memory left: engine/context.py)."""
    from localrun.engine.context import configured
    from localrun.system import physical_memory

    info = read_gguf(path)
    per_seq = context_size(n_ctx or configured(), int(info.arch_value("context_length") or 0))
    kv = sum(model_sizes(info, per_seq, kv_type).kv_per_layer) or 1
    weights = sum(t.n_bytes for t in info.tensors)
    budget = (physical_memory() or 0) // 2 - weights
    return max(1, min(MAX_DEFAULT_PARALLEL, budget // kv))


def _plan(
    path: Path,
    n_ctx: int | None,
    request: str | int,
    kv_type: str = "f16",
    projector: Path | None = None,
    cpu_moe: int = 0,
) -> tuple[Plan, str | None]:
    """The offload plan, and the key under which a working count is remembered. A vision
    model's projector goes to the first local GPU: its room is kept there."""
    from localrun.backend.llamacpp import devices as gpu

    found = gpu.gpus() if request != 0 else []
    supported = any(d.remote for d in found) or (gpu.supports_offload() if request != 0 else False)
    if not supported or not found:
        empty = ModelSizes((), (), 0, 0)
        return offload.plan(empty, [], request, offload_supported=supported or request == 0), None
    info = read_gguf(path)
    ctx = context_size(n_ctx, int(info.arch_value("context_length") or 0))
    targets = [
        GPU(f"worker {d.description}" if d.remote else d.description or d.name,
            d.free_bytes, d.total_bytes, d.remote)
        for d in found
    ]  # fmt: skip
    if projector is not None and not targets[0].remote:
        taken = projector.stat().st_size
        targets[0] = replace(targets[0], free_bytes=max(0, targets[0].free_bytes - taken))
    cpu = next((d for d in gpu.devices() if d.type == "cpu"), None)
    here = GPU("CPU", cpu.free_bytes, cpu.total_bytes) if cpu is not None else None
    # Experts kept on the CPU make another plan: its count is remembered apart.
    layout = f"{kv_type}, experts of {cpu_moe} layers on the CPU" if cpu_moe else kv_type
    key = memory_key(path, ctx, tuple(t.name for t in targets), layout)
    # A MoE model's experts kept on the CPU leave the GPU only the rest of their layers.
    sizes = model_sizes(info, ctx, kv_type).experts_on_cpu(cpu_moe)
    if request == AUTO and (count := remembered(key)) is not None:
        remembered_plan = offload.plan(sizes, targets, count, cpu=here)
        return replace(
            remembered_plan, reason="remembered from an earlier out-of-memory retry"
        ), key
    return offload.plan(sizes, targets, request, cpu=here), key
