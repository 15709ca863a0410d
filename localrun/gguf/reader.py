"""Read a GGUF file's metadata and tensor table without loading its weights.

The ``gguf`` package's ``GGUFReader`` turns every array element into a numpy view:
on a 262,144-token vocabulary that takes about 20 s here. This reader skips the large
arrays (keeping only their length) and reads the rest with ``struct``: the same file
takes a fraction of a second. Tensor byte sizes and type names come from ggml itself
(``ggml_type_size``, ``ggml_blck_size``, ``ggml_type_name`` in the libggml that
llama-cpp-python ships), so they are always those of the llama.cpp we run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from localrun.errors import HeaderTruncated, InvalidModelError
from localrun.gguf.check import GGUF_MAGIC, check_model_file

ARRAY_KEEP = 64  # arrays longer than this are summarised as ArrayInfo
MAX_NESTING = 8  # arrays of arrays: GGUF writers nest one level at most
# ggml's number of tensor types (its GGML_TYPE_COUNT, in the llama-cpp-python pinned: a test
# checks it against the bindings). ggml's type tables are read at any index, unchecked: a type
# past them reads other memory (a crash at 1000), so the reader refuses one before ggml sees it.
GGML_TYPE_COUNT = 43

_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArrayInfo:
    """A long metadata array, by type and length only (tokenizer vocabularies)."""

    type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int  # absolute offset of the data in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str) -> Any:
        """An architecture-specific value, such as ``context_length`` or ``block_count``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)


class _Cursor:
    def __init__(self, buf: Any, path: Path | str) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.depth = 0  # arrays inside arrays, now

    def truncated(self) -> HeaderTruncated:
        return HeaderTruncated(
            f"{self.path} is truncated: its GGUF header ends at byte {len(self.buf)}",
            "download or copy the model again",
        )

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.truncated()
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.buf[self.pos : self.pos + n]
        if len(raw) < n:
            raise self.truncated()
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.pos += self.take("<Q")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, length = self.take("<I"), self.take("<Q")
            if self.depth >= MAX_NESTING:  # else a crafted file ends in a RecursionError
                raise InvalidModelError(
                    f"{self.path} has arrays nested more than {MAX_NESTING} deep at byte "
                    f"{self.pos}",
                    "the file is corrupted",
                )
            self.depth += 1
            try:
                if length > ARRAY_KEEP:
                    self.skip_array(item, length)
                    return ArrayInfo(item, length)
                return [self.value(item) for _ in range(length)]
            finally:
                self.depth -= 1
        raise InvalidModelError(
            f"{self.path} has an unknown GGUF value type {kind} at byte {self.pos}",
            "the file is corrupted or from a newer GGUF version",
        )

    def skip_array(self, item: int, length: int) -> None:
        if item in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[item]) * length
        elif item == _STRING:
            unpack, buf = struct.unpack_from, self.buf
            pos = self.pos
            try:
                for _ in range(length):
                    pos += 8 + unpack("<Q", buf, pos)[0]
            except struct.error:  # a string's length past the end: checked here, not per string
                raise self.truncated() from None
            self.pos = pos
        else:
            for _ in range(length):
                self.value(item)
        if self.pos > len(self.buf):
            raise self.truncated()


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header, metadata and tensor table of a GGUF file."""
    check_model_file(path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(buf, path, len(buf))


def read_gguf_prefix(data: bytes, name: str, size: int) -> GGUFInfo:
    """Parse a GGUF's header from its first bytes (``data``) when the whole file is ``size``
    bytes: a remote file's, read without downloading it. :class:`HeaderTruncated` when
    ``data`` ends inside the header (read more)."""
    return _parse(data, name, size, whole=False)


def _parse(buf: Any, path: Path | str, size: int, *, whole: bool = True) -> GGUFInfo:
    c = _Cursor(buf, path)
    if c.take("<4s") != GGUF_MAGIC:
        raise InvalidModelError(f"{path} is not a GGUF file", "pass a .gguf model file")
    version = c.take("<I")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        metadata[key] = c.value(c.take("<I"))
    raw_tensors = []
    for _ in range(n_tensors):
        name = c.string()
        dims = tuple(c.take("<Q") for _ in range(c.take("<I")))
        raw_tensors.append((name, dims, c.take("<I"), c.take("<Q")))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
        raise InvalidModelError(
            f"{path} has an invalid general.alignment ({alignment!r})", "the file is corrupted"
        )
    data_start = (c.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, dims, kind, offset in raw_tensors:
        if not 0 <= kind < GGML_TYPE_COUNT:  # ggml reads its tables at any index given
            raise InvalidModelError(
                f"{path} has an unknown tensor type {kind} ({name})",
                "the file is corrupted or from a newer llama.cpp",
            )
        n = 1
        for d in dims:
            n *= d
        tensors.append(TensorInfo(name, dims, kind, data_start + offset, tensor_bytes(kind, n)))
    end = max((t.offset + t.n_bytes for t in tensors), default=data_start)
    if whole and end > size:
        raise InvalidModelError(
            f"{path} is truncated: its tensors end at byte {end:,} but the file has {size:,}",
            "download or copy the model again",
        )
    return GGUFInfo(version, metadata, tensors, size)


@cache
def _ggml() -> ctypes.CDLL:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    return lib


def tensor_bytes(kind: int, n_elements: int) -> int:
    """Bytes of a tensor of ``n_elements`` of ggml type ``kind``."""
    lib = _ggml()
    block = int(lib.ggml_blck_size(kind)) or 1
    return int(lib.ggml_type_size(kind)) * n_elements // block


def type_name(kind: int) -> str:
    """ggml's name of a tensor type (``q4_K``, ``f16``...)."""
    name = _ggml().ggml_type_name(kind)
    return name.decode() if name else f"type{kind}"


def type_number(name: str) -> int:
    """ggml's number for a tensor type's name (``q8_0`` gives 8)."""
    for kind in range(GGML_TYPE_COUNT):
        if type_name(kind) == name:
            return kind
    raise ValueError(f"ggml has no type {name!r}")


def file_type_name(file_type: int | None) -> str | None:
    """The quantization label of ``general.file_type`` (15 gives ``Q4_K_M``)."""
    if file_type is None:
        return None
    from localrun.backend.llamacpp import bindings

    bindings.register()
    import llama_cpp.llama_cpp as llama_cpp

    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, attr) == file_type:
            name = attr.removeprefix("LLAMA_FTYPE_")
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return f"type {file_type}"
