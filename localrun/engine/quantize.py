"""Quantizing a model: the checks before, the file written whole or not at all.

Before anything is written, llama.cpp's dry run says what the result will weigh; from it,
three refusals in one line each: a type that would not be smaller than a file already
quantized (requantizing can only lose, never win back, what was lost; ``--allow-requantize``
does it anyway), a type that needs an importance matrix without one, a disk without room.
The file is written under a temporary name beside the target and renamed when complete: a
failure or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localrun.backend.llamacpp import quantize as llama_quantize
from localrun.errors import InsufficientSpaceError, UsageError
from localrun.files import human_size
from localrun.gguf.reader import file_type_name, read_gguf

UNQUANTIZED = ("F32", "F16", "BF16")
HEADROOM = 64 << 20  # the file's metadata and alignment, over the tensors' bytes


@dataclass(frozen=True)
class Quantized:
    """What was written."""

    path: Path
    type: str
    source_type: str | None
    size_before: int
    size_after: int
    bpw_before: float
    bpw_after: float

    @property
    def requantized(self) -> bool:
        """Whether the source was already quantized."""
        return self.source_type is not None and self.source_type not in UNQUANTIZED


@dataclass(frozen=True)
class Checked:
    """A quantization that can be done: the type, the source's, llama.cpp's estimate."""

    name: str  # the type's canonical name
    ftype: int  # llama.cpp's number for it
    source_type: str | None  # the source's quantization (general.file_type), if it says
    estimate: llama_quantize.Estimate

    @property
    def requantized(self) -> bool:
        """Whether the source is already quantized."""
        return self.source_type is not None and self.source_type not in UNQUANTIZED


def check(
    source: Path,
    type_name: str,
    *,
    allow_requantize: bool = False,
    imatrix: Path | None = None,
    target_dir: Path | None = None,
) -> Checked:
    """What quantizing ``source`` to ``type_name`` gives; a one-line error for what cannot (or
    should not) be done."""
    name, ftype = llama_quantize.file_type(type_name)
    info = read_gguf(source)  # a UsageError-like one-liner for a file that is not GGUF
    file_type = info.metadata.get("general.file_type")
    source_type = file_type_name(int(file_type)) if file_type is not None else None
    checked = Checked(name, ftype, source_type, llama_quantize.estimate(source, ftype))
    estimate = checked.estimate
    if checked.requantized and estimate.size_after >= estimate.size_before and not allow_requantize:
        same = source_type == name
        raise UsageError(
            f"{source.name} is already {source_type} ({estimate.bpw_before:.2f} bits a weight)"
            + ("" if same else f"; {name} would be {estimate.bpw_after:.2f}, not smaller"),
            "quantize from the model's F16 or F32 file; a quantized file cannot win back what "
            "it lost (--allow-requantize does it anyway)",
        )
    if estimate.needs_imatrix and imatrix is None:
        raise UsageError(
            f"{name} needs an importance matrix",
            "give one with --imatrix FILE (made by llama.cpp's llama-imatrix), or choose a "
            "type of 3 bits or more",
        )
    if target_dir is not None:
        free = shutil.disk_usage(target_dir).free
        needed = estimate.size_after + HEADROOM
        if free < needed:
            raise InsufficientSpaceError(
                f"{name} of {source.name} needs about {human_size(needed)}, and "
                f"{target_dir} has {human_size(free)} free",
                "free some space, or write it elsewhere",
            )
    return checked


def quantize(
    source: Path,
    target: Path,
    type_name: str,
    *,
    threads: int,
    allow_requantize: bool = False,
    imatrix: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Quantized:
    """Write ``source`` quantized to ``type_name`` at ``target``, whole or not at all."""
    target_dir = target.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    checked = check(
        source, type_name, allow_requantize=allow_requantize, imatrix=imatrix,
        target_dir=target_dir,
    )  # fmt: skip
    matrix = llama_quantize.read_imatrix(imatrix) if imatrix is not None else None
    partial = target_dir / f".{target.name}.partial-{os.getpid()}"
    failure: list[BaseException] = []

    def work() -> None:
        try:
            llama_quantize.quantize(
                source, partial, checked.ftype, threads=threads, allow_requantize=True,
                imatrix=matrix, progress=progress,
            )  # fmt: skip
        except BaseException as e:  # handed to the waiting thread
            failure.append(e)

    # llama.cpp's call cannot be interrupted: it runs on a thread, so that Ctrl-C here can
    # remove its file and end the process.
    worker = threading.Thread(target=work, name="quantize", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
        if failure:
            raise failure[0]
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return Quantized(
        path=target,
        type=checked.name,
        source_type=checked.source_type,
        size_before=checked.estimate.size_before,
        size_after=target.stat().st_size,
        bpw_before=checked.estimate.bpw_before,
        bpw_after=checked.estimate.bpw_after,
    )
