"""Writing localrun's small files safely, and showing sizes (one of each for the package)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from localrun.errors import UsageError


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` so that a crash leaves the old file or the new one, whole.

    The content goes to a temporary file beside ``path`` (named for this process and thread,
    so that concurrent writers never share one), then replaces it in one rename. An
    ``OSError`` is the caller's to translate (it knows what the file is for).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_regular(path: str | Path, what: str, hint: str) -> int:
    """A file descriptor of the regular file ``path``, open for reading; else a one-line
    UsageError naming ``what`` ("the grammar file") with ``hint``.

    A device (``/dev/zero``), a FIFO, a socket or a folder is refused before anything is read:
    a FIFO is opened without waiting for a writer, so a FIFO with none cannot hang the command.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}", hint) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{what} {path} is {kind}", hint)
    return fd


def read_capped(path: str | Path, cap: int, what: str, hint: str) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), refused in one line
    if there are more than ``cap``.

    The cap is checked while reading, so a file that grows (or lies about its size, as
    ``/proc`` files do) costs at most ``cap`` bytes of memory.
    """
    fd = open_regular(path, what, hint)
    chunks: list[bytes] = []
    try:
        size = 0
        while chunk := os.read(fd, min(1 << 20, cap + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise UsageError(f"{what} {path} is larger than {human_size(cap)}", hint)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}", hint) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def human_size(n: float) -> str:
    """Bytes as Ollama shows them: decimal units, "253 MB", "4.7 GB"."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def human_count(n: int) -> str:
    """A count as Ollama shows parameter sizes: "268.10M", "7.24B"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
