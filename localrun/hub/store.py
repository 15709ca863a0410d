"""The local model store: huggingface_hub's cache plus one manifest per model name.

Files live in huggingface_hub's cache layout under ``<cache>/hub`` (``blobs/`` named by
their hash, ``snapshots/<commit>/`` with the real file names, ``refs/``), so the Hub's
own tools understand it. A manifest (``<cache>/manifests/<name>.json``) records which
files make up a named model (its weights, and a vision model's projector) and their
published sha256; it is written only after every file is verified, so a listed model is
always complete. Partial downloads wait in ``<cache>/partial`` to be resumed.

Files a client uploads (Ollama's ``POST /api/blobs/sha256:HEX``) are kept as Ollama keeps
them, in ``<cache>/blobs/sha256-HEX``; a created model that uses one names it by a link under
its real file name, ``<cache>/named/sha256-HEX/NAME``. A blob with no link is used by no
model: ``prune`` deletes it.

Over 400 lines because the manifest's every reader and writer is here, so its format has one
owner, and the uploaded blobs share its cleanup (``remove``'s rule, ``prune``, ``disk_usage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from localrun import paths
from localrun.errors import (
    BrokenModelError,
    LocalrunError,
    ModelNotFoundError,
    NotPulledError,
    PayloadTooLargeError,
    UsageError,
)
from localrun.files import write_atomic
from localrun.hub.refs import HubRef, is_hub_ref, parse_hub_ref

HASH_CHUNK = 8 * 1024 * 1024


# Names are file names in the store (percent-encoded): file systems allow 255 bytes.
MAX_NAME_BYTES = 250


def hub_dir() -> Path:
    """The huggingface_hub cache directory localrun uses."""
    return paths.cache_dir() / "hub"


def manifest_dir() -> Path:
    return paths.cache_dir() / "manifests"


def partial_dir() -> Path:
    """Where downloads in progress (and interrupted ones) are kept for resuming."""
    return paths.cache_dir() / "partial"


def repo_dir(repo: str) -> Path:
    """huggingface_hub's folder for a model repo: ``models--ORG--REPO``."""
    return hub_dir() / ("models--" + repo.replace("/", "--"))


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, as published on the Hub."""

    path: str  # inside the repo
    size: int
    sha256: str
    blob: str  # the blob's name in the cache (the Hub's ETag: the sha256 for LFS files)


@dataclass(frozen=True)
class Manifest:
    """A named model: its source and its files."""

    name: str
    repo: str
    revision: str | None
    commit: str
    quant: str | None
    files: tuple[ModelFile, ...]  # the weights (every shard of a split model)
    pulled_at: float = field(default_factory=time.time)
    # A vision model's multimodal projector (mmproj), pulled with the weights. Manifests
    # written before projectors were pulled have none, and load as they are.
    projector: ModelFile | None = None

    @property
    def stored_files(self) -> tuple[ModelFile, ...]:
        """Every file the model keeps in the cache: its weights, then its projector."""
        return self.files + ((self.projector,) if self.projector is not None else ())

    @property
    def size(self) -> int:
        return sum(f.size for f in self.stored_files)

    @property
    def id(self) -> str:
        """A short digest that identifies the weights, whatever the name."""
        return self.files[0].sha256[:12]

    def file_path(self, f: ModelFile) -> Path:
        """Where the file is, under its real name, in the snapshot folder."""
        return repo_dir(self.repo) / "snapshots" / self.commit / f.path

    def blob_path(self, f: ModelFile) -> Path:
        return repo_dir(self.repo) / "blobs" / f.blob

    @property
    def model_path(self) -> Path:
        """The path to give llama.cpp (the first shard of a split model)."""
        return self.file_path(self.files[0])

    @property
    def projector_path(self) -> Path | None:
        """The projector to give llama.cpp's multimodal library, for a vision model."""
        return self.file_path(self.projector) if self.projector is not None else None

    @property
    def missing_files(self) -> list[str]:
        """The model's files that are not in the cache (deleted, or removed as corrupt)."""
        return [
            f.path
            for f in self.stored_files
            if not (self.file_path(f).exists() and self.blob_path(f).exists())
        ]

    @property
    def hub_ref(self) -> str:
        """A Hub reference that pulls these files again."""
        if is_hub_ref(self.name):
            return self.name
        return HubRef(self.repo, filename=self.files[0].path, revision=self.revision).name

    def require_files(self) -> None:
        """Raise an error that says how to repair the model if any of its files is gone."""
        missing = self.missing_files
        if missing:
            raise BrokenModelError(
                f"model '{self.name}' is missing {missing[0]}"
                + (f" and {len(missing) - 1} more files" if len(missing) > 1 else "")
                + " (deleted, or removed by cache verify as corrupt)",
                f"pull it again: localrun pull {self.hub_ref}",
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["files"] = tuple(ModelFile(**f) for f in data["files"])
        if data.get("projector") is not None:
            data["projector"] = ModelFile(**data["projector"])
        return cls(**data)


def _manifest_file(name: str) -> Path:
    return manifest_dir() / (_encoded(name) + ".json")


def validate_name(name: str) -> None:
    """Refuse names that are empty, too long, control characters, or path tricks."""
    if not name.strip():
        raise UsageError("a model name cannot be empty", "use letters, digits and ./:_-")
    if any(ord(c) < 32 for c in name):
        raise UsageError(
            f"{name!r} is not a valid model name: it has control characters",
            "use letters, digits and ./:_-",
        )
    if len(_encoded(name)) > MAX_NAME_BYTES:
        raise UsageError(
            f"the model name '{name[:40]}...' is too long ({len(name)} characters)",
            "use a shorter name: at most about 80 characters",
        )
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise UsageError(
            f"'{name}' is not a valid model name: no empty, '.' or '..' parts, and not absolute",
            "use letters, digits and ./:_-",
        )


def _encoded(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def save(manifest: Manifest) -> None:
    """Write a manifest atomically (a crash leaves the old one or the new one)."""
    validate_name(manifest.name)
    write_atomic(_manifest_file(manifest.name), manifest.to_json())


def load(name: str) -> Manifest | None:
    """The manifest called ``name``, if there is one."""
    if not name or len(_encoded(name)) > MAX_NAME_BYTES:
        return None  # no model can have that name: saving one validates it
    path = _manifest_file(name)
    try:
        return Manifest.from_json(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, TypeError, KeyError):
        raise LocalrunError(
            f"the manifest of '{name}' is damaged ({path})",
            f"remove it with: localrun rm {name}, then pull again",
        ) from None


def find(text: str) -> Manifest | None:
    """The pulled model ``text`` names, without the network: a name, or a Hub reference
    (matched by repository, and by file, quant and revision where it gives them)."""
    exact = load(text)
    if exact is not None or not is_hub_ref(text):
        return exact
    ref = parse_hub_ref(text)
    exact = load(ref.name)
    if exact is not None:
        return exact
    for m in all_manifests():
        if m.repo != ref.repo or (ref.revision and ref.revision not in (m.revision, m.commit)):
            continue
        if ref.filename and m.files[0].path != ref.filename:
            continue
        if ref.quant and m.quant != ref.quant:
            continue
        return m
    return None


def all_manifests() -> list[Manifest]:
    """Every model in the store, sorted by name."""
    folder = manifest_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.json"):
        try:
            found.append(Manifest.from_json(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # shown by `cache verify`; one bad file must not hide the rest
    return sorted(found, key=lambda m: m.name)


def require(name: str) -> Manifest:
    """The manifest called ``name``, or an error that says how to get it."""
    manifest = load(name)
    if manifest is None:
        raise NotPulledError(
            f"model '{name}' is not pulled",
            "see what is here with: localrun list; get it with: localrun pull NAME",
        )
    return manifest


def copy(src: Manifest, dst: str) -> Manifest:
    """Give the same files another name."""
    validate_name(dst)
    if load(dst) is not None:
        raise UsageError(
            f"a model called '{dst}' already exists", f"remove it first: localrun rm {dst}"
        )
    copied = replace(src, name=dst, pulled_at=time.time())
    save(copied)
    return copied


def _referenced(exclude: str | None = None) -> tuple[set[Path], set[Path]]:
    """Snapshot paths and blob paths used by every manifest except ``exclude``."""
    files: set[Path] = set()
    blobs: set[Path] = set()
    for m in all_manifests():
        if m.name == exclude:
            continue
        for f in m.stored_files:
            files.add(m.file_path(f))
            blobs.add(m.blob_path(f))
    return files, blobs


def remove(name: str) -> int:
    """Forget a model and delete the files no other model uses; return the bytes freed."""
    manifest = require(name)
    used_files, used_blobs = _referenced(exclude=name)
    freed = 0
    for f in manifest.stored_files:
        link, blob = manifest.file_path(f), manifest.blob_path(f)
        if link not in used_files:
            link.unlink(missing_ok=True)
            _remove_empty_parents(link.parent, stop=hub_dir())
        if blob not in used_blobs and blob.exists():
            freed += blob.stat().st_size
            blob.unlink()
            _remove_empty_parents(blob.parent, stop=hub_dir())
    _manifest_file(name).unlink(missing_ok=True)
    return freed


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The sha256 of a file, read in large chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def _tree_size(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class DiskUsage:
    models: list[tuple[str, int]]  # (name, size) per model
    blobs_bytes: int  # what the hub cache holds on disk (shared files counted once)
    partial_bytes: int  # interrupted downloads, kept for resuming
    total_bytes: int


def disk_usage() -> DiskUsage:
    """What the store uses on disk."""
    blobs = sum(p.stat().st_size for p in (*_hub_blobs(), *_uploads()))
    partial = _tree_size(partial_dir())
    demo = _tree_size(paths.cache_dir() / "demo")
    models = [(m.name, m.size) for m in all_manifests()]
    return DiskUsage(models, blobs, partial, blobs + partial + demo)


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    corrupt: list[tuple[str, str]]  # (model name, file path in repo)
    missing: list[tuple[str, str]]


def verify(on_bytes: Callable[[int], None] | None = None) -> VerifyResult:
    """Re-hash every file of every model; delete the corrupt ones (pull again to repair)."""
    checked = 0
    corrupt: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    hashed: dict[Path, str] = {}
    for m in all_manifests():
        for f in m.stored_files:
            blob = m.blob_path(f)
            if blob in hashed and hashed[blob] != f.sha256:
                corrupt.append((m.name, f.path))  # shares a file found corrupt (now removed)
                m.file_path(f).unlink(missing_ok=True)
                continue
            if not blob.exists() or not m.file_path(f).exists():
                missing.append((m.name, f.path))
                continue
            if blob not in hashed:
                hashed[blob] = sha256_of(blob, on_bytes)
                checked += 1
            if hashed[blob] != f.sha256:
                corrupt.append((m.name, f.path))
                blob.unlink(missing_ok=True)
                m.file_path(f).unlink(missing_ok=True)
    return VerifyResult(checked, corrupt, missing)


@dataclass(frozen=True)
class PruneResult:
    partial_files: int
    unreferenced_blobs: int
    freed_bytes: int


def _hub_blobs() -> Iterator[Path]:
    root = hub_dir()
    if root.is_dir():
        yield from (p for p in root.glob("models--*/blobs/*") if p.is_file())


def prune() -> PruneResult:
    """Delete interrupted downloads and blobs that no model uses."""
    from filelock import FileLock, Timeout

    freed = partial_count = blob_count = 0
    folder = partial_dir()
    if folder.is_dir():
        for part in folder.glob("*.part"):
            lock = FileLock(str(part.with_suffix(".lock")))
            try:
                lock.acquire(timeout=0)  # a pull in progress holds it: leave that one alone
            except Timeout:
                continue
            try:
                freed += part.stat().st_size
                part.unlink()
                partial_count += 1
            finally:
                lock.release()
    _, used_blobs = _referenced()
    for blob in _hub_blobs():
        if blob not in used_blobs:
            freed += blob.stat().st_size
            blob.unlink()
            blob_count += 1
    for blob in _uploads():
        if not _named(blob):
            freed += blob.stat().st_size
            blob.unlink()
            blob_count += 1
    parts, part_bytes = _prune_uploads_in_progress()
    # Snapshot links left pointing at deleted blobs.
    for link in hub_dir().glob("models--*/snapshots/*/**/*"):
        if link.is_symlink() and not link.exists():
            link.unlink()
    return PruneResult(partial_count + parts, blob_count, freed + part_bytes)


# -- uploaded blobs ---------------------------------------------------------------------------

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
UPLOAD_RESERVE = 1024**3  # an upload leaves this much of its disk free


def upload_dir() -> Path:
    """Uploaded files, named by their sha256 as Ollama names its blobs."""
    return paths.cache_dir() / "blobs"


def named_dir() -> Path:
    """Each uploaded blob's links under the file names created models know it by."""
    return paths.cache_dir() / "named"


def upload_path(digest: str) -> Path:
    """Where the blob ``sha256:HEX`` is kept (whether or not it is there)."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise UsageError(
            f"invalid digest format: {digest[:80]!r}",
            "name a blob by its sha256, as sha256: and 64 hex digits",
        )
    return upload_dir() / f"sha256-{match.group(1).lower()}"


def upload_room() -> int:
    """How many bytes an upload may take: the free disk under the store, less a reserve."""
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return max(0, shutil.disk_usage(folder).free - UPLOAD_RESERVE)


def too_large(size: int, room: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the upload is {size} bytes or more, and the disk under localrun's store has room for "
        f"{room} (keeping {UPLOAD_RESERVE // 1024**3} GiB free)",
        "free some disk space, or point LOCALRUN_HOME at a larger disk",
    )


class BlobUpload:
    """A blob being received: written beside the blobs under a name of its own, hashed as it
    comes, renamed into place by :meth:`finish` only when its sha256 is the one announced.
    :meth:`close` deletes whatever did not finish, so a mismatch, a client gone or a disk full
    leaves nothing. ``write`` may run in a worker thread; ``close`` waits for it.

    While it runs, a lock beside it tells ``prune`` to leave it alone.
    """

    def __init__(self, digest: str, limit: int) -> None:
        from filelock import FileLock

        self.path = upload_path(digest)
        self.expected = self.path.name.removeprefix("sha256-")
        self.limit = limit
        self.size = 0
        self.part = self.path.with_name(f"{self.path.name}.{secrets.token_hex(6)}.part")
        self._hash = hashlib.sha256()
        self._mutex = threading.Lock()
        # Taken in one thread and let go in another (the server's worker and its loop).
        self._lock = FileLock(str(self.part.with_suffix(".lock")), thread_local=False)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(timeout=0)  # a name of its own: never held by another
        try:
            self._file = self.part.open("xb")
        except BaseException:
            self._release()
            raise

    def write(self, data: bytes) -> None:
        """Append ``data``; refused (413) past the limit, with nothing of it written."""
        with self._mutex:
            if self.size + len(data) > self.limit:
                raise too_large(self.size + len(data), self.limit)
            self._hash.update(data)
            self._file.write(data)
            self.size += len(data)

    def finish(self) -> None:
        """Put the blob in place, or raise (400) if its sha256 is not the announced one."""
        with self._mutex:
            got = self._hash.hexdigest()
            if got != self.expected:
                raise UsageError(
                    f"digest mismatch, expected sha256:{self.expected}, got sha256:{got}",
                    "send the file's own bytes, named by their sha256",
                )
            self._file.flush()
            os.fsync(self._file.fileno())  # named by its content: whole before it has the name
            self._file.close()
            os.replace(self.part, self.path)

    def close(self) -> None:
        """Delete the temporary file if the blob was not put in place, and unlock."""
        with self._mutex:
            self._file.close()
            self.part.unlink(missing_ok=True)
            self._release()

    def _release(self) -> None:
        self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)


def _uploads() -> Iterator[Path]:
    folder = upload_dir()
    if folder.is_dir():
        yield from (p for p in folder.glob("sha256-*") if p.suffix not in (".part", ".lock"))


def _named(blob: Path) -> bool:
    """Whether a created model names the uploaded ``blob`` (it has a link)."""
    folder = named_dir() / blob.name
    return folder.is_dir() and any(folder.iterdir())


def _prune_uploads_in_progress() -> tuple[int, int]:
    """Delete uploads a stopped server left half-written; (files, bytes)."""
    from filelock import FileLock, Timeout

    count = freed = 0
    folder = upload_dir()
    for part in folder.glob("*.part") if folder.is_dir() else ():
        lock = FileLock(str(part.with_suffix(".lock")))
        try:
            lock.acquire(timeout=0)  # an upload in progress holds it
        except Timeout:
            continue
        try:
            freed += part.stat().st_size
            part.unlink()
            count += 1
        finally:
            lock.release()
            part.with_suffix(".lock").unlink(missing_ok=True)
    return count, freed


def name_upload(digest: str, file_name: str) -> Path:
    """The uploaded blob ``digest`` under ``file_name`` (a plain file name), for a created
    model: a hard link (a symbolic one where the disk has none); no bytes are copied."""
    blob = upload_path(digest)
    if not blob.is_file():
        raise ModelNotFoundError(
            f"blob {digest} not found", f"upload the file first: POST /api/blobs/{digest}"
        )
    link = named_dir() / blob.name / file_name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists() and link.samefile(blob):
        return link
    tmp = link.with_name(f".{file_name}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(blob, tmp)
    except OSError:
        tmp.symlink_to(blob)
    os.replace(tmp, link)
    return link


def is_named_upload(path: Path) -> bool:
    """Whether ``path`` is a link that :func:`name_upload` made."""
    return path.parent.parent == named_dir() and _DIGEST.fullmatch(path.parent.name) is not None


def release_upload(link: Path, *, delete_blob: bool = True) -> int:
    """Remove a created model's link (:func:`name_upload`); with ``delete_blob``, the blob too
    when no link to it is left, as ``remove`` deletes the files no other model uses. Returns
    the bytes freed."""
    if not is_named_upload(link):
        return 0
    link.unlink(missing_ok=True)
    _remove_empty_parents(link.parent, stop=named_dir())
    blob = upload_dir() / link.parent.name
    if not delete_blob or not blob.is_file() or _named(blob):
        return 0
    size = blob.stat().st_size
    blob.unlink()
    return size
