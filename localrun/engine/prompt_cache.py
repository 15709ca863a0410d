"""Prompt states kept on disk, so that a prefix evaluated once is read back in any process.

A long prefix comes back again and again: a Modelfile's system prompt and messages, a document
asked several questions, a saved chat. After the engine has evaluated such a prefix, it copies
that sequence's cells (llama.cpp's own state format, about 8 KB a token for the demo model) and
a writer thread stores them here; a later request whose prompt begins with the same tokens, in
this process or another, has them put back and evaluates only the rest.

Layout: ``<cache>/prompts/<key>/<n>-<digest>.kv``, where ``key`` covers everything that decides
whether saved cells fit a context (the model file's sha256, the model's shape, the cache's
window, the adapters, llama.cpp's version), ``n`` is the number of tokens and ``digest`` their
sha256. A file holds a header, the token ids and the state; on restore, the ids are compared
with the new prompt's, and a file that does not match (or that llama.cpp refuses) is not used.
Files are written whole and renamed into place, so a killed process leaves no entry half
written; several processes saving one entry leave one good file. The cache is bounded
(``LOCALRUN_PROMPT_CACHE_MAX``, 4 GB by default): the least recently used entries go first.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from localrun import paths
from localrun.files import write_atomic

MAGIC = b"localrun-prompt-state-1\n"
DEFAULT_MAX_BYTES = 4 * 1000**3
MIN_TOKENS = 64  # a shorter prefix is quicker to evaluate than to read back
STALE_TMP_S = 3600.0  # a temporary file this old was left by a killed writer


def max_bytes() -> int:
    """The cache's bound (bytes, or with K, M, G): ``LOCALRUN_PROMPT_CACHE_MAX``, else
    ``[prompt_cache] max`` in the configuration file, else 4 GB."""
    from localrun import config

    value = config.size(
        "prompt_cache", "max", "LOCALRUN_PROMPT_CACHE_MAX", "the prompt cache's bound"
    )
    return DEFAULT_MAX_BYTES if value is None else value


def model_identity(path: Path) -> str:
    """The model file's sha256 where localrun knows it without reading the file (the demo
    model, a pulled one); otherwise its path, size and modification time, which change
    whenever its content does."""
    from localrun.hub import store
    from localrun.models.demo import cached_demo_path, expected_sha256

    real = path.resolve()
    if real == (cached_demo_path() or Path()).resolve():
        return f"sha256:{expected_sha256()}"
    for manifest in store.all_manifests():
        if not manifest.missing_files and manifest.model_path.resolve() == real:
            return f"sha256:{manifest.files[0].sha256}"
    stat = real.stat()
    return f"file:{real}:{stat.st_size}:{stat.st_mtime_ns}"


def root() -> Path:
    """Where every model's prompt states live."""
    return paths.cache_dir() / "prompts"


def _digest(tokens: list[int], images: Mapping[int, str] | None = None) -> str:
    """The prefix's name: its ids, and the sha256 of each picture among them (an image's id
    in the token list holds only 31 bits of it)."""
    h = hashlib.sha256(token_bytes(tokens))
    if images:
        for token in dict.fromkeys(t for t in tokens if t < 0):
            h.update(images[token].encode())
    return h.hexdigest()[:32]


def token_bytes(tokens: list[int]) -> bytes:
    """Token ids as little-endian int32 bytes (hashed, stored, and searched in)."""
    ids = array.array("i", tokens)
    if sys.byteorder != "little":
        ids.byteswap()
    return ids.tobytes()


@dataclass(frozen=True)
class Entry:
    """One stored prefix."""

    path: Path
    n_tokens: int
    digest: str
    size: int
    used: float  # when it was last written or read (its mtime)


def entries(folder: Path | None = None) -> list[Entry]:
    """The stored prefixes under ``folder`` (all models' when None), most recently used first."""
    found = []
    base = folder or root()
    pattern = "*.kv" if folder else "*/*.kv"
    for path in base.glob(pattern):
        n, _, digest = path.stem.partition("-")
        if not n.isdigit():
            continue
        try:
            stat = path.stat()
        except OSError:
            continue  # removed meanwhile
        found.append(Entry(path, int(n), digest, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda e: -e.used)


def clear() -> tuple[int, int]:
    """Remove every stored prefix: (entries, bytes) removed."""
    count = size = 0
    for entry in entries():
        try:
            entry.path.unlink()
        except OSError:
            continue
        count += 1
        size += entry.size
    return count, size


class PromptCache:
    """One model's (and context layout's) stored prefixes, with a writer thread."""

    def __init__(self, identity: str, layout: dict[str, object], limit: int | None = None) -> None:
        key = json.dumps({"model": identity, **layout}, sort_keys=True)
        self.folder = root() / hashlib.sha256(key.encode()).hexdigest()[:24]
        self.limit = max_bytes() if limit is None else limit
        self._saves: queue.SimpleQueue[tuple[list[int], bytes, str] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def lookup(
        self,
        prompt: list[int],
        longest: int | None = None,
        images: Mapping[int, str] | None = None,
    ) -> tuple[int, memoryview] | None:
        """The longest stored prefix of ``prompt`` (of at most ``longest`` tokens) that leaves
        at least one token to read: (its length, its state). Its token ids are checked
        against the prompt's; ``images`` gives the digest of each picture's id in it."""
        if not self.enabled:
            return None
        for entry in sorted(entries(self.folder), key=lambda e: -e.n_tokens):
            n = entry.n_tokens
            if n >= len(prompt) or n < MIN_TOKENS or (longest is not None and n > longest):
                continue
            if prompt[n] < 0 and prompt[n - 1] == prompt[n]:
                continue  # it would end inside a picture
            if entry.digest != _digest(prompt[:n], images):
                continue
            state = self._read(entry, prompt[:n])
            if state is not None:
                return n, state
        return None

    def _read(self, entry: Entry, tokens: list[int]) -> memoryview | None:
        # Read once into a writable buffer that llama.cpp reads in place: no copies of the
        # megabytes of state.
        try:
            with entry.path.open("rb") as f:
                data = bytearray(entry.size)
                if f.readinto(data) != entry.size:
                    return None
        except OSError:
            return None
        head = len(MAGIC) + 4
        if not data.startswith(MAGIC) or len(data) < head:
            return None
        (n,) = struct.unpack_from("<I", data, len(MAGIC))
        if n != len(tokens) or data[head : head + 4 * n] != token_bytes(tokens):
            return None  # not this prefix after all: never used
        with contextlib.suppress(OSError):  # removed meanwhile: the state is read already
            os.utime(entry.path)  # recently used: evicted last
        return memoryview(data)[head + 4 * n :]

    def save(
        self, tokens: list[int], state: bytes, images: Mapping[int, str] | None = None
    ) -> None:
        """Store ``state`` as the prefix ``tokens`` (with ``images``' digests by their ids),
        on the writer thread (not the caller's)."""
        if not self.enabled or len(tokens) < MIN_TOKENS or not state:
            return
        with self._lock:
            self._pending += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_all, name="localrun-prompt-cache", daemon=True
                )
                self._writer.start()
        self._saves.put((list(tokens), state, _digest(tokens, images)))

    def has(self, tokens: list[int], images: Mapping[int, str] | None = None) -> bool:
        """Whether this exact prefix is stored already."""
        return (self.folder / f"{len(tokens)}-{_digest(tokens, images)}.kv").exists()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for the saves queued so far to be written (before a one-shot process ends)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Write what is queued, then end the writer thread."""
        self.flush()
        with self._lock:
            if self._writer is not None:
                self._saves.put(None)
                self._writer = None

    def _write_all(self) -> None:
        while (item := self._saves.get()) is not None:
            tokens, state, digest = item
            try:
                self._write(tokens, state, digest)
            except Exception:
                pass
            finally:
                with self._lock:
                    self._pending -= 1

    def _write(self, tokens: list[int], state: bytes, digest: str) -> None:
        path = self.folder / f"{len(tokens)}-{digest}.kv"
        data = MAGIC + struct.pack("<I", len(tokens)) + token_bytes(tokens) + state
        write_atomic(path, data)
        self._evict()

    def _evict(self) -> None:
        """Least recently used entries first, until every model's entries fit the bound;
        temporary files of killed writers too."""
        now = time.time()
        for tmp in root().glob("*/.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass
        kept = entries()
        total = sum(e.size for e in kept)
        for entry in reversed(kept):  # oldest first
            if total <= self.limit:
                break
            try:
                entry.path.unlink()
            except OSError:
                continue
            total -= entry.size
