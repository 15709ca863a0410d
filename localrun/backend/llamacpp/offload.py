"""Decide how many layers go to the GPU(s), from the model's tensor table and free memory.

llama.cpp offloads the *last* ``n_gpu_layers`` repeating layers; a count of
``n_layer + 1`` also offloads the output layer. The cost of a layer on a GPU is its
weights plus its share of the KV cache; each GPU also needs a compute buffer and a
safety margin. The plan fills the GPUs with as many layers as fit, all when they all
fit, none without a GPU backend.

RPC workers' devices (``--rpc``) count as GPUs. Where they are the only ones, this
machine's CPU takes part in the split too: the layers are shared between it and the
workers by free memory, rather than all sent over the network.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from localrun import paths
from localrun.backend import N_BATCH
from localrun.files import human_size, write_atomic
from localrun.gguf.reader import GGUFInfo, tensor_bytes, type_number

GiB = 1 << 30
MiB = 1 << 20
COMPUTE_RESERVE = 384 * MiB  # graph buffers for a 512-token micro-batch
MIN_MARGIN = 256 * MiB
MARGIN_FRACTION = 0.05  # of each device's total memory: drivers and other processes
_LAYER = re.compile(r"^blk\.(\d+)\.")
_EXPERTS = re.compile(r"\.ffn_(up|down|gate)_(ch|)exps\.")  # a MoE layer's experts

AUTO, ALL = "auto", "all"


@dataclass(frozen=True)
class ModelSizes:
    """Bytes a model needs on a device, per part."""

    layers: tuple[int, ...]  # weights of each repeating layer
    kv_per_layer: tuple[int, ...]  # KV cache of each layer for the planned context
    output: int  # output layer (its weights; a tied embedding is duplicated there)
    n_vocab: int
    experts: tuple[int, ...] = ()  # of each layer's weights, its experts' (a MoE model)

    def experts_on_cpu(self, n: int) -> ModelSizes:
        """The sizes a GPU holds when the first ``n`` layers' experts stay in the CPU's
        memory (-1: every layer's)."""
        if not n or not self.experts:
            return self
        kept = len(self.layers) if n < 0 else n
        pairs = enumerate(zip(self.layers, self.experts, strict=True))
        layers = tuple(w - (e if i < kept else 0) for i, (w, e) in pairs)
        return replace(self, layers=layers)

    @property
    def n_layer(self) -> int:
        return len(self.layers)


def model_sizes(info: GGUFInfo, n_ctx: int, kv_type: str = "f16") -> ModelSizes:
    """Per-layer weight and KV sizes from a GGUF's tensor table and hyper-parameters.

    Each layer keeps ``n_ctx`` cells of keys and values in ``kv_type`` (ggml's own sizes:
    f16 2 bytes an element, q8_0 34 bytes a block of 32, q4_0 18). Sliding-window layers
    count in full: llama.cpp's contexts keep a full-size cache for them (``swa_full``).
    """
    kind = type_number(kv_type)
    n_layer = int(info.arch_value("block_count") or 0)
    layers = [0] * n_layer
    experts = [0] * n_layer
    output = 0
    embedding = 0
    for t in info.tensors:
        match = _LAYER.match(t.name)
        if match and int(match.group(1)) < n_layer:
            layers[int(match.group(1))] += t.n_bytes
            if _EXPERTS.search(t.name):
                experts[int(match.group(1))] += t.n_bytes
        elif t.name.startswith("output"):
            output += t.n_bytes
        elif t.name.startswith("token_embd."):
            embedding += t.n_bytes
    if not any(t.name == "output.weight" for t in info.tensors):
        output += embedding  # tied embeddings: llama.cpp loads a copy for the output layer
    n_embd = int(info.arch_value("embedding_length") or 0)
    n_head = _per_layer(info.arch_value("attention.head_count"), n_layer, 1)
    n_head_kv = _per_layer(info.arch_value("attention.head_count_kv"), n_layer, 0)
    kv = []
    for i in range(n_layer):
        heads = n_head[i] or 1
        kv_heads = n_head_kv[i] or heads
        key = int(info.arch_value("attention.key_length") or n_embd // heads)
        value = int(info.arch_value("attention.value_length") or n_embd // heads)
        kv.append(
            tensor_bytes(kind, n_ctx * kv_heads * key)
            + tensor_bytes(kind, n_ctx * kv_heads * value)
        )
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    n_vocab = int(getattr(tokens, "length", 0) or (len(tokens) if isinstance(tokens, list) else 0))
    return ModelSizes(tuple(layers), tuple(kv), output, n_vocab, tuple(experts))


def _per_layer(value: object, n_layer: int, default: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layer] + [default] * (n_layer - len(value))
    return [int(value) if isinstance(value, int) else default] * n_layer


@dataclass(frozen=True)
class GPU:
    """What the planner needs to know of a device."""

    name: str
    free_bytes: int
    total_bytes: int
    remote: bool = False  # an RPC worker's device (llama.cpp puts these first)


@dataclass(frozen=True)
class Plan:
    n_gpu_layers: int  # llama.cpp's count: n_layer + 1 includes the output layer
    n_layer: int
    devices: tuple[str, ...]
    split: tuple[float, ...] | None  # share of layers per device when there are several
    gpu_bytes: int
    reason: str  # why, in words
    remote: int = 0  # how many of ``devices`` (the first ones) are RPC workers'

    @property
    def offloaded(self) -> int:
        """Layers on the GPU, counting the output layer as one of n_layer + 1."""
        return min(self.n_gpu_layers, self.n_layer + 1)

    @property
    def placement(self) -> str:
        """Short form for the status line."""
        if self.n_gpu_layers == 0:
            return "CPU"
        kind = "GPU"
        if self.remote:
            kind = "RPC" if self.remote == len(self.devices) else "GPU+RPC"
        return f"{kind} {self.offloaded}/{self.n_layer + 1}"

    @property
    def local_gpu_bytes(self) -> int:
        """What the plan puts on this machine's own GPUs (not on RPC workers')."""
        if self.n_gpu_layers == 0 or not self.devices or self.remote == len(self.devices):
            return 0
        if not self.remote:
            return self.gpu_bytes
        shares = self.split or (1.0,) * len(self.devices)
        return int(self.gpu_bytes * sum(shares[self.remote :]) / (sum(shares) or 1))

    def parts(self) -> list[tuple[str, int, int]]:
        """Where each layer runs, as llama.cpp assigns them: ``(device, first, last)``, with
        layer ``n_layer`` standing for the output layer."""
        n, k = self.n_layer, self.offloaded
        start = n + 1 - k
        found: list[tuple[str, int, int]] = [("CPU", 0, start - 1)] if start > 0 else []
        if k == 0 or not self.devices:
            return found
        shares = self.split or (1.0,) * len(self.devices)
        bounds, total = [], 0.0
        for share in shares:
            total += share
            bounds.append(total)
        bounds = [b / (total or 1) for b in bounds]
        for layer in range(start, n + 1):
            index = min(bisect.bisect_right(bounds, (layer - start) / k), len(self.devices) - 1)
            device = self.devices[index]
            if found and found[-1][0] == device:
                found[-1] = (device, found[-1][1], layer)
            else:
                found.append((device, layer, layer))
        return found

    def describe(self) -> str:
        """Long form for --verbose and doctor."""
        if self.n_gpu_layers == 0:
            return f"CPU: {self.reason}"
        where = " + ".join(self.devices)
        text = (
            f"{self.placement.split()[0]}: {self.offloaded}/{self.n_layer + 1} layers on {where}, "
            f"{human_size(self.gpu_bytes)} ({self.reason})"
        )
        if self.remote or len(self.devices) > 1:
            text += "; " + ", ".join(
                f"{_layers(first, last, self.n_layer)} on {device}"
                for device, first, last in self.parts()
            )
        return text


def _layers(first: int, last: int, n_layer: int) -> str:
    """Layers ``first``..``last`` in words, ``n_layer`` being the output layer."""
    output = last == n_layer
    last = min(last, n_layer - 1)
    if first > last:
        return "output"
    span = f"layer {first}" if first == last else f"layers {first}-{last}"
    return span + (" and output" if output else "")


def usable_bytes(gpu: GPU) -> int:
    """What a device can give the model: free memory less the margin, and no more than the
    budget the user set for a local GPU (:func:`budget`)."""
    margin = max(MIN_MARGIN, int(gpu.total_bytes * MARGIN_FRACTION))
    usable = max(0, gpu.free_bytes - margin)
    cap = None if gpu.remote else budget()
    return usable if cap is None else min(usable, cap)


BUDGET_ENV = "LOCALRUN_GPU_MEMORY"


def budget() -> int | None:
    """The most a load may plan to use on each local GPU, its compute reserve included
    (``LOCALRUN_GPU_MEMORY``, or ``[gpu] memory`` in the configuration file): for a card
    shared with other programs; None where not set."""
    from localrun import config

    return config.size("gpu", "memory", BUDGET_ENV, "the GPU memory budget")


def _room_words(gpus: list[GPU]) -> str:
    local = [g for g in gpus if not g.remote]
    cap = budget() if local else None
    if cap is not None and any(g.free_bytes > cap for g in local):
        return f"the {human_size(cap)} of {BUDGET_ENV}"
    return "the free GPU memory"


def _cost(sizes: ModelSizes, k: int) -> int:
    """Bytes on the GPUs for the last ``k`` layers (``n_layer + 1`` adds the output layer)."""
    n = sizes.n_layer
    layers = min(k, n)
    total = sum(sizes.layers[n - layers :]) + sum(sizes.kv_per_layer[n - layers :])
    if k > n:
        # The output layer also brings its logits buffer (n_vocab floats per token).
        total += sizes.output + sizes.n_vocab * 4 * N_BATCH
    return total


def plan(
    sizes: ModelSizes,
    gpus: list[GPU],
    request: str | int = AUTO,
    *,
    offload_supported: bool = True,
    cpu: GPU | None = None,
) -> Plan:
    """How many layers to put on ``gpus`` for ``request`` (auto, all, or a count).

    ``cpu`` is this machine's memory: where every device is an RPC worker's, an automatic
    plan gives the CPU its share of the layers by free memory.
    """
    n = sizes.n_layer
    names = tuple(g.name for g in gpus)
    remote = sum(1 for g in gpus if g.remote)
    if request == 0:
        return Plan(0, n, (), None, 0, "--gpu-layers 0 keeps every layer on the CPU")
    if not offload_supported:
        return Plan(0, n, (), None, 0, "this llama.cpp build has no GPU backend, see docs/gpu.md")
    if not gpus:
        return Plan(0, n, (), None, 0, "no GPU found by llama.cpp's backends, see docs/gpu.md")
    capacity = [max(0, usable_bytes(g) - COMPUTE_RESERVE) for g in gpus]
    if request == ALL or isinstance(request, int):
        k = n + 1 if request == ALL else min(int(request), n + 1)
        reason = "as asked" if request == ALL else f"--gpu-layers {request}"
    else:
        k = max((k for k in range(n + 2) if _cost(sizes, k) <= sum(capacity)), default=0)
        if cpu is not None and gpus and remote == len(gpus) and k > 0:
            mine = max(0, usable_bytes(cpu) - COMPUTE_RESERVE)
            share = sum(capacity) / (sum(capacity) + mine or 1)
            k = min(k, max(1, round((n + 1) * share)))
            reason = f"{k} of {n + 1} on the RPC workers, by their free memory against this CPU's"
        elif k == n + 1:
            reason = "everything fits"
        elif k == 0:
            reason = f"not even one layer fits in {_room_words(gpus)}"
        else:
            reason = f"{k} of {n + 1} fit in {_room_words(gpus)}"
    if k == 0:
        return Plan(0, n, (), None, 0, reason)
    split = None
    if len(gpus) > 1:
        total = sum(capacity) or 1
        split = tuple(c / total for c in capacity)
    return Plan(k, n, names, split, _cost(sizes, k), reason, remote)


# -- remembering what worked ---------------------------------------------------------


def _memory_file() -> Path:
    return paths.cache_dir() / "offload.json"


def memory_key(model: Path, n_ctx: int, devices: tuple[str, ...], kv_type: str = "f16") -> str:
    st = model.stat()
    key = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}|{n_ctx}|{','.join(devices)}"
    return key if kv_type == "f16" else f"{key}|{kv_type}"  # f16: as before the types came


def remembered(key: str) -> int | None:
    """A layer count that loaded after an out-of-memory retry, if one was recorded."""
    try:
        value = json.loads(_memory_file().read_text()).get(key)
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def remember(key: str, n_gpu_layers: int) -> None:
    """Record the count that worked, so the next load starts there."""
    path = _memory_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = n_gpu_layers
    write_atomic(path, json.dumps(data, indent=2))
