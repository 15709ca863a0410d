"""Quantizing a GGUF with llama.cpp's own ``llama_model_quantize``.

The types are llama.cpp's file types by their usual names (``Q4_K_M``, ``IQ4_XS``...), read
from the bindings' ``LLAMA_FTYPE_*`` constants, as ``llama-quantize`` names them. What a
quantization will give (its size, whether it needs an importance matrix) comes from llama.cpp
too: a dry run (``dry_run``) that logs each tensor's new size and the total. Progress is the
``[ i/ n]`` line llama.cpp logs before each tensor.

Importance matrices (``--imatrix``) are read here, as ``llama-quantize`` reads them (its
loader is in llama.cpp's ``common`` library, which the wheel does not ship): the GGUF form
(``NAME.in_sum2`` and ``NAME.counts`` tensors) and the legacy ``.dat`` form.
"""

from __future__ import annotations

import ctypes
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from localrun.backend.llamacpp import bindings, logs
from localrun.errors import InvalidModelError, LocalrunError, UsageError
from localrun.files import human_size, read_capped

bindings.register()

import llama_cpp.llama_cpp as lc  # noqa: E402

MiB = 1 << 20
# The most of an importance matrix file read (it is read whole). It holds a float for each
# input column of each weight matrix, per expert: about 25 MB for a dense 70B model, and
# 1-2 GB for the mixtures of experts with hundreds of experts a layer (DeepSeek-V3, Kimi-K2).
IMATRIX_CAP = 4 << 30
# Names llama-quantize accepts besides the file types' own: the K-quants' aliases.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# Types llama.cpp can make but not name a file type of its own, or cannot make from a model.
_NOT_TARGETS = {"GUESSED", "ALL_F32"}


@cache
def file_types() -> dict[str, int]:
    """Every quantization llama.cpp can write, by name: ``{"Q4_K_M": 15, ...}``."""
    found: dict[str, int] = {}
    for attr in dir(lc):
        if (
            attr.startswith("LLAMA_FTYPE_")
            and attr.removeprefix("LLAMA_FTYPE_") not in _NOT_TARGETS
        ):
            name = attr.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_")
            found[name] = int(getattr(lc, attr))
    found["F32"] = int(lc.LLAMA_FTYPE_ALL_F32)
    return found


def file_type(name: str) -> tuple[str, int]:
    """A type's canonical name and llama.cpp's number for it; a UsageError names the known ones."""
    key = ALIASES.get(name.upper(), name.upper())
    types = file_types()
    if key not in types:
        known = ", ".join(sorted(types))
        raise UsageError(f"unknown quantization type {name!r}", f"choose one of: {known}")
    return key, types[key]


@dataclass(frozen=True)
class Estimate:
    """What quantizing a file to a type gives, by llama.cpp's dry run."""

    size_before: int  # bytes of the tensors now
    size_after: int  # bytes of the tensors then
    bpw_before: float  # bits per weight
    bpw_after: float
    needs_imatrix: bool  # llama.cpp will refuse without an importance matrix


_TOTAL = re.compile(r"(model|quant) size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")
_TENSOR = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


def _params(ftype: int, threads: int, allow_requantize: bool) -> lc.llama_model_quantize_params:
    params: lc.llama_model_quantize_params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = allow_requantize
    return params


def estimate(source: Path, ftype: int) -> Estimate:
    """llama.cpp's dry run of quantizing ``source`` to ``ftype``: nothing is written."""
    params = _params(ftype, 1, True)
    params.dry_run = True
    logs.start()
    if lc.llama_model_quantize(str(source).encode(), b"", ctypes.byref(params)) != 0:
        raise _failure(source)
    sizes: dict[str, tuple[float, float]] = {}
    needs = False
    for _, line in logs.recent():
        if match := _TOTAL.search(line):
            sizes[match.group(1)] = (float(match.group(2)), float(match.group(3)))
        needs = needs or "will require an imatrix" in line
    if len(sizes) != 2:
        raise LocalrunError(f"llama.cpp's dry run of {source} gave no sizes", "report this")
    (before, bpw_before), (after, bpw_after) = sizes["model"], sizes["quant"]
    return Estimate(int(before * MiB), int(after * MiB), bpw_before, bpw_after, needs)


def quantize(
    source: Path,
    target: Path,
    ftype: int,
    *,
    threads: int,
    allow_requantize: bool,
    imatrix: dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``source`` quantized to ``ftype`` at ``target``; ``progress(done, total)`` after
    each tensor. A failure raises with llama.cpp's reason (``target`` may be left partial:
    the caller writes to a temporary name)."""
    params = _params(ftype, threads, allow_requantize)
    keep: list[object] = []
    if imatrix:
        entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            encoded = name.encode()
            keep += [data, encoded]
            entries[i].name = encoded
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        entries[len(imatrix)].name = None  # the end of the list
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_model_imatrix_data))

    def follow(line: str) -> None:
        if progress is not None and (match := _TENSOR.match(line)):
            progress(int(match.group(1)), int(match.group(2)))

    logs.start()
    with logs.following(follow):
        failed = lc.llama_model_quantize(
            str(source).encode(), str(target).encode(), ctypes.byref(params)
        )
    if failed:
        raise _failure(source)


def _failure(source: Path) -> LocalrunError:
    errors = logs.recent_errors()
    text = " ".join(e.strip("= \n") for e in errors if e.strip("= \n"))
    if "requires an importance matrix" in text:
        return UsageError(
            "this quantization needs an importance matrix",
            "give one with --imatrix FILE (made by llama.cpp's llama-imatrix), or choose "
            "a type of 3 bits or more",
        )
    return LocalrunError(
        f"llama.cpp could not quantize {source}: {text or 'it gave no reason'}",
        "LOCALRUN_DEBUG=1 shows llama.cpp's log",
    )


# -- importance matrices ---------------------------------------------------------------------


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """An importance matrix file (GGUF, or the legacy ``.dat``): each weight's values, as
    ``llama-quantize`` computes them (sums over counts). Only a regular file is read, and no
    more than :data:`IMATRIX_CAP` of it."""
    hint = "give a file made by llama.cpp's llama-imatrix"
    # A model file given by mistake is refused by its size, before gigabytes are read.
    if (size := _regular_size(path)) is not None and size > IMATRIX_CAP:
        raise UsageError(
            f"the importance matrix {path} is larger than {human_size(IMATRIX_CAP)}", hint
        )
    raw = read_capped(path, IMATRIX_CAP, "the importance matrix", hint)
    try:
        return _gguf_imatrix(raw, path) if raw[:4] == b"GGUF" else _legacy_imatrix(raw)
    except InvalidModelError as e:  # the GGUF reader's, which speaks of models
        raise UsageError(f"{path} is not an importance matrix: {e.message}", hint) from None
    except (ValueError, struct.error, KeyError, IndexError) as e:
        raise UsageError(f"{path} is not an importance matrix ({e})", hint) from None


def _regular_size(path: Path) -> int | None:
    """The size of ``path`` if it is a regular file (``read_capped`` names the others)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size if stat.S_ISREG(found.st_mode) else None


def _gguf_imatrix(raw: bytes, path: Path) -> dict[str, np.ndarray]:
    from localrun.gguf.reader import read_gguf_prefix

    info = read_gguf_prefix(raw, str(path), len(raw))
    tensors = {t.name: t for t in info.tensors}
    found: dict[str, np.ndarray] = {}
    for name, sums_info in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        weight = name.removesuffix(".in_sum2")
        counts_info = tensors[f"{weight}.counts"]
        sums = _f32(raw, sums_info.offset, sums_info.n_elements)
        counts = _f32(raw, counts_info.offset, counts_info.n_elements)
        per = sums.reshape(len(counts), -1)
        with np.errstate(over="ignore", invalid="ignore"):  # the uncounted rows: 1.0, below
            values = np.where(counts[:, None] > 0, per / np.maximum(counts[:, None], 1e-30), 1.0)
        found[weight] = values.reshape(-1).astype(np.float32)
    if not found:
        raise ValueError("no .in_sum2 tensors")
    return found


def _f32(data: bytes, offset: int, n: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4", count=n, offset=offset).astype(np.float32)


def _legacy_imatrix(raw: bytes) -> dict[str, np.ndarray]:
    (n_entries,) = struct.unpack_from("<i", raw, 0)
    pos, found = 4, {}
    if not 0 < n_entries < 1_000_000:
        raise ValueError(f"{n_entries} entries")
    for _ in range(n_entries):
        (length,) = struct.unpack_from("<i", raw, pos)
        name = raw[pos + 4 : pos + 4 + length].decode()
        pos += 4 + length
        ncall, nval = struct.unpack_from("<ii", raw, pos)
        pos += 8
        if length < 0 or nval < 0:  # numpy reads a count of -1 as "all the rest"
            raise ValueError(f"a negative size at byte {pos}")
        values = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        found[name] = values / ncall if ncall > 0 else values
    return found
