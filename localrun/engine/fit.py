"""Which of a Hub repository's quantizations fit this machine, before pulling any.

For each GGUF the repository offers: its weights (the Hub's file size), its KV cache for the
default context and a compute reserve, sized by the offload planner from the file's own
header (read with an HTTP range, not downloaded). Where it fits: wholly on this machine's
GPUs, partly on them (the rest on the CPU), on the CPU alone (no GPU), or not at all. ``auto``
picks the largest that fits the GPUs, else the largest that fits at all; on a machine without
a GPU, the largest that fits the memory free now.
"""

from __future__ import annotations

from dataclasses import dataclass

from localrun.backend import context_size
from localrun.backend.llamacpp.offload import COMPUTE_RESERVE, model_sizes
from localrun.engine.context import Room as Room
from localrun.engine.context import room
from localrun.errors import InsufficientSpaceError
from localrun.files import human_size
from localrun.hub.pull import Offer, offers, remote_header
from localrun.hub.refs import HubRef

ON_GPU, PART_GPU, ON_CPU, TOO_BIG = "GPU", "GPU+CPU", "CPU", "does not fit"


@dataclass(frozen=True)
class Fit:
    """Where one of a repository's models would run here."""

    quant: str | None
    files: tuple[str, ...]
    weights: int
    kv: int  # its KV cache for the default context
    n_ctx: int
    where: str  # ON_GPU, PART_GPU, ON_CPU or TOO_BIG
    projector: int = 0  # a vision model's projector, loaded beside it

    @property
    def needed(self) -> int:
        return self.weights + self.projector + self.kv + COMPUTE_RESERVE

    @property
    def label(self) -> str:
        return self.quant or self.files[0]


def judge(ref: HubRef, commit: str, offered: list[Offer], here: Room) -> list[Fit]:
    """Each offered model, sized from its header, and where it would run here."""
    found = []
    for offer in offered:
        info = remote_header(ref, commit, offer.choice.files[0], offer.size)
        n_ctx = context_size(None, int(info.arch_value("context_length") or 0))
        kv = sum(model_sizes(info, n_ctx).kv_per_layer)
        need = offer.size + offer.projector + kv
        if here.gpus and need <= here.gpu:
            where = ON_GPU
        elif here.gpus and need + COMPUTE_RESERVE <= here.gpu + here.ram:
            where = PART_GPU
        elif need + COMPUTE_RESERVE <= here.ram:
            where = ON_CPU
        else:
            where = TOO_BIG
        found.append(
            Fit(offer.choice.quant, offer.choice.files, offer.size, kv, n_ctx, where,
                offer.projector)
        )  # fmt: skip
    return sorted(found, key=lambda f: f.weights)


def survey(text: str) -> tuple[HubRef, list[Fit], Room]:
    """The repository ``text`` names, its models judged against this machine."""
    ref, commit, offered = offers(text)
    here = room()
    return ref, judge(ref, commit, offered, here), here


def pick(ref: HubRef, fits: list[Fit], here: Room) -> tuple[Fit, str]:
    """The largest model that fits the GPUs, else the largest that fits at all; and why."""
    whole = [f for f in fits if f.where == ON_GPU]
    somehow = [f for f in fits if f.where != TOO_BIG]
    chosen = whole[-1] if whole else somehow[-1] if somehow else None
    if chosen is None:
        smallest = (
            f": the smallest, {fits[0].label}, needs {human_size(fits[0].needed)}" if fits else ""
        )
        raise InsufficientSpaceError(
            f"no model of {ref.repo} fits here{smallest}; this machine has {here.describe()}",
            "pick a smaller model, or name a quantization (hf.co/ORG/REPO:Q4_K_M) and --force",
        )
    larger = [f for f in fits if f.weights > chosen.weights]
    projector = f", {human_size(chosen.projector)} of projector" if chosen.projector else ""
    why = (
        f"{chosen.label}: {human_size(chosen.weights)} of weights{projector}, "
        f"{human_size(chosen.kv)} of KV cache for {chosen.n_ctx} tokens and "
        f"{human_size(COMPUTE_RESERVE)} for compute fit {here.describe()}"
    )
    where = {ON_GPU: "all on the GPU", PART_GPU: "partly on the GPU", ON_CPU: "on the CPU"}
    why += f" ({where[chosen.where]})"
    if larger:
        why += f"; {larger[0].label} ({human_size(larger[0].needed)}) would not"
        if here.gpus and chosen.where == ON_GPU:
            why += " fit the GPU"
    return chosen, why
