"""Cheap checks on a model file before llama.cpp sees it.

llama.cpp answers every bad file with the same "failed to load model"; these checks
name the real cause (missing, a directory, unreadable, not GGUF at all) in
microseconds, without parsing the whole header.
"""

from __future__ import annotations

import struct
from pathlib import Path

from localrun.errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


def check_model_file(path: Path) -> None:
    """Raise a :class:`LocalrunError` naming what is wrong with ``path``, if anything."""
    if not path.exists():
        raise ModelNotFoundError(
            f"model file not found: {path}",
            "check the path, or use a model name such as 'demo'",
        )
    if path.is_dir():
        raise InvalidModelError(
            f"{path} is a directory, not a model file",
            "pass the path of a .gguf file inside it",
        )
    if not path.is_file():  # a FIFO would hold the open() below until a writer came
        raise InvalidModelError(
            f"{path} is not a regular file", "pass a .gguf model file (a file on a disk)"
        )
    try:
        with path.open("rb") as f:
            header = f.read(8)
    except PermissionError:
        raise InvalidModelError(
            f"cannot read {path}: permission denied",
            "make the file readable (chmod +r) or run as a user who can read it",
        ) from None
    except OSError as e:
        raise InvalidModelError(
            f"cannot read {path}: {e.strerror}", "check the file and its disk"
        ) from None
    if header[:4] != GGUF_MAGIC:
        found = f"it starts with {header[:4]!r}, not {GGUF_MAGIC!r}" if header else "empty file"
        raise InvalidModelError(
            f"{path} is not a GGUF model file ({found})",
            "pass a .gguf model file; other formats must be converted to GGUF first",
        )
    if len(header) < 8:
        raise InvalidModelError(
            f"{path} is truncated: it ends inside the GGUF header",
            "download or copy the model again",
        )
    (version,) = struct.unpack("<I", header[4:8])
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelError(
            f"{path} is GGUF version {version}; this llama.cpp reads versions 2 and 3",
            "use a GGUF file written by a current converter",
        )
