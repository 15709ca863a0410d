"""Pull models from the Hugging Face Hub into the local store.

huggingface_hub does the Hub's work: repository metadata (``HfApi.model_info``), file URLs,
auth headers (``HF_TOKEN``, ``hf auth login``), its timeouts, its error types, and the file
lock (filelock, which it uses too). What it lacks, and this module (with
:mod:`localrun.hub.download`) adds:

- resuming across runs: huggingface_hub 2.x deletes its partial file on any error,
  Ctrl-C included; here the partial file stays in ``<cache>/partial`` under a stable
  name and the next pull continues from its last byte;
- the sha256 check against the hash the Hub publishes for LFS files (huggingface_hub
  checks only the size), computed while the bytes stream;
- a transfer fast enough to keep up with the network (huggingface_hub's ``http_get``
  moved bytes at a third of curl's speed over loopback; see :mod:`localrun.hub.download`);
- refusing to start when the disk cannot hold the download, and warning when the model
  cannot fit in memory.

The verified file is then placed in huggingface_hub's cache layout (blob, snapshot
link, ref) and a manifest records the model under its name. A vision model's projector
(``mmproj-*.gguf``) is pulled with its weights, by the same steps, and recorded with them.

Over 400 lines because a pull is one sequence (plan, check room, fetch, verify, place,
record) whose steps share its cleanup on failure; the transfer itself is in
:mod:`localrun.hub.download`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from localrun import paths
from localrun.errors import (
    CorruptDownloadError,
    HeaderTruncated,
    HubError,
    InsufficientSpaceError,
    LocalrunError,
    NetworkError,
    NotGGUFError,
    from_os_error,
)
from localrun.files import human_size
from localrun.gguf.check import GGUF_MAGIC
from localrun.gguf.reader import GGUFInfo, read_gguf_prefix
from localrun.hub import store
from localrun.hub.refs import (
    GGUFChoice,
    HubRef,
    choose,
    choose_projector,
    gguf_choices,
    parse_hub_ref,
)
from localrun.system import physical_memory

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

    from localrun.hub import download

DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_MARGIN = 256 * 1024 * 1024


class Reporter(Protocol):
    """Receives progress; the CLI draws it, tests record it."""

    def note(self, text: str) -> None: ...

    def start_file(self, name: str, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def end_file(self) -> None: ...


class SilentReporter:
    """A reporter that shows nothing."""

    def note(self, text: str) -> None:
        pass

    def start_file(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def end_file(self) -> None:
        pass


@dataclass(frozen=True)
class PullResult:
    manifest: store.Manifest
    downloaded_bytes: int  # transferred in this run
    resumed_bytes: int  # already on disk from an interrupted pull
    seconds: float  # the whole pull: metadata, transfer, verification, placement
    transfer_seconds: float  # moving and hashing the bytes alone
    up_to_date: bool  # nothing needed downloading


def endpoint() -> str:
    """The Hub's base URL (``HF_ENDPOINT`` points it elsewhere, as for huggingface_hub)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def pull(
    text: str, *, force: bool = False, reporter: Reporter | None = None, refresh: bool = True
) -> PullResult:
    """Pull the model ``text`` names; with ``refresh=False`` a local copy is used as is."""
    reporter = reporter or SilentReporter()
    ref = parse_hub_ref(text)
    local = store.find(text)
    broken = local is not None and bool(local.missing_files)  # pulled again to repair it
    if local is not None and not broken and (offline() or not refresh):
        return PullResult(local, 0, 0, 0.0, 0.0, up_to_date=True)
    if local is not None and offline():
        local.require_files()  # says which files are gone and how to repair them
    if offline():
        raise NetworkError(
            f"{ref.name} is not pulled and HF_HUB_OFFLINE is set",
            "unset HF_HUB_OFFLINE and pull it, or use a model from: localrun list",
        )
    start = time.perf_counter()
    for folder in (store.partial_dir(), store.hub_dir(), store.manifest_dir()):
        paths.ensure_dir(folder)  # fail before any download if the cache is not writable
    with _as_localrun_errors(ref):
        return _pull(ref, force, reporter, start)


@contextlib.contextmanager
def _as_localrun_errors(ref: HubRef) -> Iterator[None]:
    """The Hub client's exceptions, meanwhile, as localrun's errors (ours pass as they are)."""
    try:
        yield
    except LocalrunError:
        raise
    except Exception as e:
        translated = _translate(e, ref)
        if translated is None:
            raise
        raise translated from e


def _pull(ref: HubRef, force: bool, reporter: Reporter, start: float) -> PullResult:
    from huggingface_hub import HfApi
    from huggingface_hub.utils import logging as hf_logging
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()  # progress is ours to draw, on stderr, once
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call] # its retry warnings are multi-line; errors reach us anyway

    info = HfApi(endpoint=endpoint()).model_info(
        ref.repo, revision=ref.revision, files_metadata=True
    )
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    choice, note = choose(ref, sorted(siblings))
    if note:
        reporter.note(note)
    commit = str(info.sha)
    files = tuple(_hub_file(ref, siblings[name]) for name in choice.files)
    projector = choose_projector(siblings, choice)
    manifest = store.Manifest(
        name=ref.name,
        repo=ref.repo,
        revision=ref.revision,
        commit=commit,
        quant=choice.quant,
        files=files,
        projector=_hub_file(ref, siblings[projector]) if projector else None,
    )
    needed = [f for f in manifest.stored_files if not manifest.blob_path(f).exists()]
    _check_space(manifest, needed, force)
    downloaded = resumed = 0
    transfer_s = 0.0
    for f in needed:
        transfer = _download(manifest, f, reporter)
        downloaded += transfer.received
        resumed += f.size - transfer.received
        transfer_s += transfer.seconds
    for f in manifest.stored_files:
        _link(manifest, f)
    store.save(manifest)
    elapsed = time.perf_counter() - start
    return PullResult(manifest, downloaded, resumed, elapsed, transfer_s, up_to_date=not needed)


def _hub_file(ref: HubRef, sibling: RepoSibling) -> store.ModelFile:
    """One of the repo's files as the manifest records it, with the sha256 the Hub publishes."""
    lfs = sibling.lfs
    if lfs is None:
        raise NotGGUFError(
            f"'{sibling.rfilename}' in {ref.repo} is not stored as a large file, so it is not "
            "a real GGUF",
            "pick a .gguf file that the repository stores with Git LFS",
        )
    return store.ModelFile(sibling.rfilename, int(lfs.size), lfs.sha256, lfs.sha256)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_space(manifest: store.Manifest, needed: list[store.ModelFile], force: bool) -> None:
    cache = paths.cache_dir()
    have = sum(_partial_size(f) for f in needed)
    want = sum(f.size for f in needed) - have
    free = shutil.disk_usage(_existing_ancestor(cache)).free
    if want > 0 and free < want + DISK_MARGIN:
        raise InsufficientSpaceError(
            f"not enough disk space for {manifest.name}: it needs {human_size(want)} plus a "
            f"{human_size(DISK_MARGIN)} margin, and {human_size(free)} is free under {cache}",
            "free some space, or set LOCALRUN_HOME to a disk with more room",
        )
    memory = physical_memory()
    if memory and manifest.size > memory and not force:
        raise InsufficientSpaceError(
            f"{manifest.name} is {human_size(manifest.size)}, more than this machine's "
            f"{human_size(memory)} of memory: it cannot run here",
            "pick a smaller quant, or pass --force to pull it anyway",
        )


def _partial_path(f: store.ModelFile) -> Path:
    return store.partial_dir() / f"{f.blob}.part"


def _partial_size(f: store.ModelFile) -> int:
    try:
        return _partial_path(f).stat().st_size
    except FileNotFoundError:
        return 0


def _download(
    manifest: store.Manifest, f: store.ModelFile, reporter: Reporter
) -> download.Transfer:
    """Download one file into its blob, resuming a partial one."""
    from filelock import FileLock
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    from localrun.hub import download

    blob = manifest.blob_path(f)
    part = _partial_path(f)
    paths.ensure_dir(blob.parent)
    # One download per file, however many pulls run at once: the others wait here,
    # then find the blob in place.
    with FileLock(str(part.with_suffix(".lock"))):
        if blob.exists():  # another pull finished it while this one waited
            return download.Transfer(f.sha256, 0, 0.0)
        have = _partial_size(f)
        reporter.start_file(f.path, f.size, have if have <= f.size else 0)
        url = hf_hub_url(manifest.repo, f.path, revision=manifest.commit, endpoint=endpoint())
        try:
            transfer = download.fetch(
                url,
                part,
                size=f.size,
                headers=build_hf_headers(),
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                on_bytes=reporter.advance,
            )
        finally:
            reporter.end_file()
        if transfer.sha256 != f.sha256:
            part.unlink()
            raise CorruptDownloadError(
                f"corrupted download of {f.path}: its sha256 does not match the Hub's "
                "(the file was deleted)",
                "pull again",
            )
        with part.open("rb") as check:
            if check.read(4) != GGUF_MAGIC:
                part.unlink()
                raise NotGGUFError(
                    f"{f.path} in {manifest.repo} is not a GGUF file (wrong magic bytes)",
                    "pick another file; localrun runs GGUF models only",
                )
        os.replace(part, blob)
    part.with_suffix(".lock").unlink(missing_ok=True)
    return transfer


def _link(manifest: store.Manifest, f: store.ModelFile) -> None:
    """Place the file in huggingface_hub's layout: a relative snapshot link and the ref.

    (huggingface_hub writes these only from inside its own download, which cannot resume.)
    """
    link = manifest.file_path(f)
    paths.ensure_dir(link.parent)
    target = os.path.relpath(manifest.blob_path(f), link.parent)
    if not (link.is_symlink() and os.readlink(link) == target):
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
    refs = store.repo_dir(manifest.repo) / "refs"
    paths.ensure_dir(refs)
    ref_file = refs / (manifest.revision or "main")
    paths.ensure_dir(ref_file.parent)
    ref_file.write_text(manifest.commit)


_AUTH_HINT = "set HF_TOKEN, or log in with: hf auth login"
_RESUMES = "pull again: it resumes from what was received"

Translate = Callable[[Any, HubRef], "LocalrunError | None"]


def _hub_errors() -> list[tuple[Callable[[Exception], bool], Translate]]:
    """huggingface_hub's and the network's errors, first match wins (as the hf CLI's table)."""
    from huggingface_hub import errors as hf

    from localrun.hub import download

    def kind(*types: type) -> Callable[[Exception], bool]:
        return lambda e: isinstance(e, types)

    def from_http_stack(e: Exception) -> bool:
        module = type(e).__module__.split(".")[0]
        return module in ("httpx", "httpx2", "httpcore", "httpcore2") or isinstance(
            e, ConnectionError
        )

    return [
        (kind(download.TransferError), lambda e, ref: NetworkError(
            f"the connection to the Hub dropped while pulling {ref.name} ({e})", _RESUMES)),
        (kind(download.HTTPStatusError), lambda e, ref: _status_error(e.status, ref)),
        (kind(hf.GatedRepoError), lambda e, ref: HubError(
            f"{ref.repo} is gated: its licence must be accepted on the Hub, by a logged-in user",
            f"accept it on the model's page, then {_AUTH_HINT}")),
        (kind(hf.RepositoryNotFoundError), lambda e, ref: HubError(
            f"repository {ref.repo} not found on the Hub (or it is private)",
            f"check the name; for a private repository, {_AUTH_HINT}")),
        (kind(hf.RevisionNotFoundError), lambda e, ref: HubError(
            f"revision '{ref.revision}' not found in {ref.repo}",
            "use a branch, tag or commit of that repository")),
        (kind(hf.RemoteEntryNotFoundError), lambda e, ref: HubError(
            f"file not found in {ref.repo}: {e}", "check the file name")),
        (lambda e: isinstance(e, hf.HfHubHTTPError) and e.response is not None,
         lambda e, ref: _status_error(e.response.status_code, ref)),
        (kind(hf.OfflineModeIsEnabled), lambda e, ref: NetworkError(
            f"{ref.name} is not pulled and offline mode is on", "unset HF_HUB_OFFLINE")),
        (lambda e: from_http_stack(e) and (
            "Connect" in type(e).__name__ or isinstance(e, ConnectionRefusedError)),
         lambda e, ref: NetworkError(
            f"cannot reach the Hub at {endpoint()} ({type(e).__name__}: {e})",
            "check the network or HF_ENDPOINT; pulled models run offline")),
        (from_http_stack, lambda e, ref: NetworkError(
            f"the connection to the Hub dropped while pulling {ref.name} ({type(e).__name__})",
            _RESUMES)),
        (kind(OSError), lambda e, ref: from_os_error(
            e, during=f" while pulling {ref.name}",
            then=" and pull again: the download resumes where it stopped")),
    ]  # fmt: skip


def _translate(e: Exception, ref: HubRef) -> LocalrunError | None:
    """Map huggingface_hub's and the network's errors to one line with a hint."""
    for matches, translate in _hub_errors():
        if matches(e):
            return translate(e, ref)
    return None


def _status_error(status: int, ref: HubRef) -> LocalrunError:
    if status in (401, 403):
        return HubError(
            f"the Hub refused access to {ref.repo} (HTTP {status}): bad or missing token",
            _AUTH_HINT,
        )
    if status == 429:
        return HubError(
            "the Hub is rate-limiting requests (HTTP 429)",
            "wait a minute and pull again (downloaded parts are kept); logging in raises the limit",
        )
    if status >= 500:
        return HubError(
            f"the Hub failed with HTTP {status}",
            "try again later; downloaded parts are kept and the pull resumes",
        )
    return HubError(f"the Hub answered HTTP {status} for {ref.repo}", "try again later")


# -- looking before pulling ------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """One loadable model a Hub repository offers: its files, quantization and size."""

    choice: GGUFChoice
    size: int  # bytes, all shards together
    projector: int = 0  # bytes of the projector pulled with it (a vision model's), if any


def offers(text: str) -> tuple[HubRef, str, list[Offer]]:
    """What the repository ``text`` names offers (its ref, its commit, its GGUF models), read
    from the Hub's file list; nothing is downloaded."""
    from huggingface_hub import HfApi

    ref = parse_hub_ref(text)
    with _as_localrun_errors(ref):
        info = HfApi(endpoint=endpoint()).model_info(
            ref.repo, revision=ref.revision, files_metadata=True
        )
    sizes = {s.rfilename: int(s.lfs.size if s.lfs else s.size or 0) for s in info.siblings or []}
    found = []
    for c in gguf_choices(sorted(sizes)):
        projector = choose_projector(sizes, c)
        extra = sizes[projector] if projector else 0
        found.append(Offer(c, sum(sizes[f] for f in c.files), extra))
    return ref, str(info.sha), found


HEADER_READ = 4 << 20  # the first read of a remote header; doubled while it is cut short
HEADER_MAX = 256 << 20


def remote_header(ref: HubRef, commit: str, filename: str, size: int) -> GGUFInfo:
    """A remote GGUF's metadata and tensor table, from its first bytes (HTTP ranges)."""
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    url = hf_hub_url(ref.repo, filename, revision=commit, endpoint=endpoint())
    n = min(HEADER_READ, size)
    while True:
        headers = {**build_hf_headers(), "Range": f"bytes=0-{n - 1}"}
        with _as_localrun_errors(ref):
            response = get_session().get(url, headers=headers, follow_redirects=True)
            response.raise_for_status()
        data = response.content[:n]  # a server that ignores Range sends it all
        try:
            return read_gguf_prefix(data, f"{ref.repo}/{filename}", size)
        except HeaderTruncated:
            if n >= min(size, HEADER_MAX) or len(data) < n:
                raise
            n = min(n * 2, size, HEADER_MAX)
