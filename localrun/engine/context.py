"""The context a model gets when none is asked for, and the room this machine has for it.

As Ollama and llama.cpp's ``--fit`` do: the context the model was trained for, where its
weights and KV cache (at the KV type in use) fit the GPUs, or the memory
free now on a machine without one; else the longest power of two that fits; never below
``MIN_DEFAULT`` tokens (nor above the trained context). ``LOCALRUN_CONTEXT_LENGTH``, or
``[context] length`` in the configuration file, sets the default instead, as
``OLLAMA_CONTEXT_LENGTH`` does. A context asked for (``--ctx``, ``num_ctx``) is never
changed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from localrun import config
from localrun.backend import context_size
from localrun.backend.llamacpp.offload import (
    COMPUTE_RESERVE,
    GPU,
    MARGIN_FRACTION,
    MIN_MARGIN,
    model_sizes,
    usable_bytes,
)
from localrun.errors import UsageError
from localrun.files import human_size
from localrun.gguf.reader import GGUFInfo
from localrun.system import available_memory, physical_memory

MIN_DEFAULT = 4096  # a default context is never shorter, unless the model's own is
ENV = "LOCALRUN_CONTEXT_LENGTH"


@dataclass(frozen=True)
class Room:
    """What this machine can give a model now."""

    gpu: int  # bytes the GPUs can take (free, less margins and their compute reserve)
    gpus: tuple[str, ...]
    ram: int  # bytes of memory free now, less a margin

    def describe(self) -> str:
        parts = [f"{human_size(self.ram)} of free memory"]
        if self.gpus:
            parts.insert(0, f"{human_size(self.gpu)} free on {' + '.join(self.gpus)}")
        return " and ".join(parts)


def room() -> Room:
    """The GPUs' usable memory (as the offload planner counts it) and the free memory."""
    from localrun.backend.llamacpp import devices

    local = [d for d in devices.gpus() if not d.remote] if devices.supports_offload() else []
    targets = [GPU(d.description or d.name, d.free_bytes, d.total_bytes) for d in local]
    gpu = sum(max(0, usable_bytes(g) - COMPUTE_RESERVE) for g in targets)
    total = physical_memory() or 0
    free = available_memory() or total
    ram = max(0, free - max(MIN_MARGIN, int(total * MARGIN_FRACTION)))
    return Room(gpu, tuple(g.name for g in targets), ram)


@dataclass(frozen=True)
class Chosen:
    """A default context, and why it is that long (for ``--verbose``, ``ps`` and ``doctor``)."""

    n_ctx: int  # each sequence's
    reason: str


def configured() -> int | None:
    """The default context the user set (``LOCALRUN_CONTEXT_LENGTH``, or the file's)."""
    text = config.setting("context", "length", ENV)
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(
            f"{ENV} must be a number of tokens, not {text!r}", f"set it like {ENV}=32768"
        )
    return value


def default_context(
    info: GGUFInfo,
    kv_type: str = "f16",
    *,
    extra: int = 0,
    here: Room | None = None,
) -> Chosen:
    """The context when none is asked for (``extra``: bytes loaded beside the weights, such
    as a vision projector). A load's sequences share it (engine/load.py)."""
    trained = int(info.arch_value("context_length") or 0)
    if (asked := configured()) is not None:
        return Chosen(context_size(asked, 0), f"context {asked} tokens, set by {ENV}")
    floor = min(trained, MIN_DEFAULT) if trained else MIN_DEFAULT
    if not trained:
        unknown = "the model does not say what it was trained for"
        return Chosen(floor, f"context {floor} tokens: {unknown}")
    here = here if here is not None else room()
    weights = sum(t.n_bytes for t in info.tensors) + extra

    def kv(n_ctx: int) -> int:
        return sum(model_sizes(info, n_ctx, kv_type).kv_per_layer)

    if here.gpus and weights + kv(floor) <= here.gpu:
        budget, where = here.gpu, f"the {human_size(here.gpu)} free on {' + '.join(here.gpus)}"
    elif here.gpus:
        budget, where = here.gpu + here.ram, f"{here.describe()}"
    else:
        budget, where = max(0, here.ram - COMPUTE_RESERVE), f"{human_size(here.ram)} of free memory"
    fits = [n for n in _candidates(trained, floor) if weights + kv(n) <= budget]
    cache = f"its KV cache ({human_size(kv(trained))}, {kv_type})"
    if fits and fits[0] == trained:
        why = f"as the model was trained: {cache} and weights fit {where}"
        return Chosen(trained, f"context {trained} tokens, {why}")
    longer = f"; the trained {trained} would need {human_size(kv(trained))} of KV cache"
    if fits:
        why = f"the longest that fits {where}{longer}"
        return Chosen(fits[0], f"context {fits[0]} tokens, {why}")
    why = f"the least a default is, though it does not fit {where}{longer}"
    return Chosen(floor, f"context {floor} tokens, {why}")


def _candidates(trained: int, floor: int) -> list[int]:
    """The trained context, then each power of two below it down to ``floor``, longest first."""
    found = [trained]
    power = 1 << (trained.bit_length() - 1)
    if power == trained:
        power //= 2
    while power >= floor:
        found.append(power)
        power //= 2
    return found
