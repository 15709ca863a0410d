"""A small Hugging Face Hub on 127.0.0.1, for the tests and benchmarks of ``localrun pull``.

No machine here reaches huggingface.co, so the real ``huggingface_hub`` client is pointed at this
server instead (``endpoint=hub.url``). It answers the few routes the client uses to pull a file
(HEAD/GET ``resolve``, model info, tree listing) the way huggingface_hub 2.x expects, and
it misbehaves on demand (:class:`Faults`) so that tests can show what ``pull`` does when the
network or the Hub does: dropped connections, ignored ``Range``, corrupt or short bodies, stalls,
rate limits and missing headers.

Standard library only, so that it runs wherever the tests run. It is also a program, for the
download benchmark: ``python -m tests.hub --repo org/name --file model.gguf [--port 0]`` serves one
file and prints the base URL on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import pathlib
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["FakeHub", "Faults", "LoggedRequest", "main"]

CHUNK_SIZE = 1 << 20
"""Bytes per read and write when a body does not go by ``sendfile``: fit for 250 MB files."""

_STALL_POLL_S = 0.05
"""How often a stalled answer looks whether its client went away (release wakes it at once)."""

_SHUTDOWN_POLL_S = 0.02
"""How often the accept loop looks for ``stop()``: the default 0.5 s would slow every test."""

_INVERT = bytes(255 - i for i in range(256))
"""``bytes.translate`` table for ``b ^ 0xFF``: wrong bytes at memory speed, even for big files."""

_LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
"""A fixed date in the one format ``huggingface_hub.utils.parse_datetime`` reads."""

_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass
class Faults:
    """What the Hub gets wrong, on purpose. Replace ``hub.faults`` to change it mid-test.

    Offsets (``cut_after``, ``stall_after``) are absolute positions in the file, so a client that
    resumes with ``Range: bytes=N-`` past the fault point gets the rest normally: that is how a
    real dropped connection looks to a client that resumes.
    """

    cut_after: int | None = None
    """GET body: close the connection once the body reaches this offset (never if a Range starts
    at or past it; 0 closes before the first byte)."""
    cut_times: int = 1
    """How many GETs are cut; after that bodies are served whole (a big number: every time)."""
    ignore_range: bool = False
    """Answer a Range request with 200 and the whole body, as some CDNs do."""
    wrong_bytes: bool = False
    """Send a body of the right length with every byte XOR 0xFF: the client checks size only."""
    short_body: bool = False
    """Announce the full Content-Length but send only half of the body, then close."""
    drop_body: bool = False
    """Close every GET's connection after its headers, before any body byte, wherever the
    Range starts: a link that keeps failing."""
    stall_after: int | None = None
    """Send the body up to this offset, set ``hub.stalled``, then wait for ``hub.release_stall()``
    (or the client going away) before sending the rest."""
    status: int | None = None
    """Answer every request (HEAD, GET, ``/api/``) with this status and no body..."""
    status_times: int = 1_000_000
    """...for this many requests, then normally."""
    retry_after: str | None = None
    """``Retry-After`` value sent with ``status``."""
    omit_headers: frozenset[str] = frozenset()
    """Among ``X-Repo-Commit``, ``ETag`` (with ``X-Linked-Etag``) and ``Content-Length`` (with
    ``X-Linked-Size``): leave these out of HEAD/GET ``resolve`` answers."""


@dataclass
class LoggedRequest:
    """One request as the Hub received it, so tests can assert what the client asked for."""

    method: str
    path: str
    """Path with the query string, still URL-encoded, as on the request line."""
    headers: dict[str, str] = field(default_factory=dict)
    """Header names in canonical Title-Case (``Range``, ``Authorization``), whatever the client's
    spelling, so that tests can index them reliably."""


@dataclass(frozen=True)
class _Blob:
    """One file of a repo: its bytes (or where they are on disk) and the hashes the Hub shows."""

    path: str
    size: int
    sha256: str
    blob_id: str
    """Git object id: of the LFS pointer for LFS files, of the content otherwise (as on the Hub)."""
    lfs: bool
    pointer_size: int
    data: bytes | None
    source: pathlib.Path | None

    @property
    def etag(self) -> str:
        """The quoted ETag: the sha256 for LFS files (the client names the blob after it)."""
        return f'"{self.sha256 if self.lfs else self.blob_id}"'

    def chunks(self, start: int, end: int, invert: bool) -> Iterator[bytes]:
        """The bytes in ``[start, end)``, a chunk at a time, never the whole of a big file."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, CHUNK_SIZE):
                chunk = bytes(view[pos : min(end, pos + CHUNK_SIZE)])
                yield chunk.translate(_INVERT) if invert else chunk
            return
        assert self.source is not None
        with self.source.open("rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                chunk = f.read(min(CHUNK_SIZE, end - pos))
                if not chunk:
                    raise OSError(f"{self.source} shrank while being served")
                pos += len(chunk)
                yield chunk.translate(_INVERT) if invert else chunk


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    files: dict[str, _Blob]
    commit: str
    branch: str
    gated: bool

    def has_revision(self, revision: str) -> bool:
        return revision in (self.branch, self.commit)

    def folders(self) -> set[str]:
        """Every folder that holds a file, at any depth ("a", "a/b")."""
        out: set[str] = set()
        for name in self.files:
            parts = name.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return out


def _git_blob_sha1(size: int, chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha1(f"blob {size}\0".encode())
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _make_blob(name: str, content: bytes | pathlib.Path, lfs: bool) -> _Blob:
    """Hash the content once, in chunks for files on disk, so a 250 MB file never sits in memory."""
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1()
    if isinstance(content, pathlib.Path):
        size = content.stat().st_size
        git_sha1.update(f"blob {size}\0".encode())
        with content.open("rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                sha256.update(chunk)
                git_sha1.update(chunk)
        data, source = None, content
    else:
        size = len(content)
        data, source = bytes(content), None
        sha256.update(data)
        git_sha1.update(f"blob {size}\0".encode() + data)
    sha = sha256.hexdigest()
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
    )
    blob_id = _git_blob_sha1(len(pointer), iter([pointer])) if lfs else git_sha1.hexdigest()
    return _Blob(name, size, sha, blob_id, lfs, len(pointer), data, source)


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"repo id must be 'org/name', got {repo_id!r}")


def _check_filename(name: str) -> None:
    parts = name.split("/")
    if not all(parts) or any(p in (".", "..") for p in parts):
        raise ValueError(f"file name must be a relative path without '.' or '..', got {name!r}")


def _title_case(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _applies_at(offset: int | None, start: int, end: int) -> bool:
    """Whether a fault at absolute ``offset`` falls inside a body that spans ``[start, end)``.

    A body that starts at or past the offset is the client resuming after the fault: it is served.
    Offset 0 is the exception, so that a fault can strike before the first byte.
    """
    if offset is None or offset >= end:
        return False
    return start < offset or start == offset == 0


class _Unsatisfiable(Exception):
    pass


def _parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """``[start, end)`` for ``bytes=N-``, ``bytes=N-M`` or ``bytes=-K``; None for no or odd headers.

    Odd headers (several ranges, other units) get the whole body, as RFC 9110 allows.
    Raises ``_Unsatisfiable`` for a range past the end (416).
    """
    if value is None:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            suffix = int(last)
            if suffix <= 0 or total == 0:
                raise _Unsatisfiable
            return max(0, total - suffix), total
        start = int(first)
        last_pos = int(last) if last else None
    except ValueError:
        return None
    if start < 0 or (last_pos is not None and last_pos < start):
        return None
    if start >= total:
        raise _Unsatisfiable
    return start, total if last_pos is None else min(last_pos + 1, total)


class FakeHub:
    """A Hugging Face Hub in a daemon thread, with repos added by the test and faults on demand.

    Use it as a context manager (``with FakeHub() as hub:``) so the port is always freed.
    """

    def __init__(self, token: str | None = None, *, port: int = 0) -> None:
        """``token`` is the one bearer token that opens gated repos; ``port`` 0 picks a free one."""
        self.token = token
        self.requests: list[LoggedRequest] = []
        self.stalled = threading.Event()
        self._port = port
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._faults = Faults()
        self._cuts_done = 0
        self._statuses_done = 0
        self._release = threading.Event()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """What the Hub gets wrong now; assign a new ``Faults`` to change it."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """New faults start afresh: counters at zero, ``stalled`` clear, old stalls released."""
        with self._lock:
            old_release, self._release = self._release, threading.Event()
            self._faults = faults
            self._cuts_done = 0
            self._statuses_done = 0
            self.stalled.clear()
        old_release.set()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | pathlib.Path],
        *,
        gated: bool = False,
        branch: str = "main",
        lfs: bool = True,
    ) -> str:
        """Publish (or replace) a model repo; returns its commit sha, the same for the same input.

        A ``Path`` is served from disk, so benchmark files need not fit in memory.
        """
        _check_repo_id(repo_id)
        blobs: dict[str, _Blob] = {}
        for name, content in files.items():
            _check_filename(name)
            blobs[name] = _make_blob(name, content, lfs)
        digest = hashlib.sha1(repo_id.encode() + b"\0" + branch.encode())
        for name in sorted(blobs):
            digest.update(b"\0" + name.encode() + b"\0" + blobs[name].sha256.encode())
        commit = digest.hexdigest()
        with self._lock:
            self._repos[repo_id] = _Repo(repo_id, blobs, commit, branch, gated)
        return commit

    def release_stall(self) -> None:
        """Let stalled bodies go on; stalls stay released until ``faults`` is replaced."""
        with self._lock:
            release = self._release
        release.set()

    def file_url(self, repo_id: str, filename: str, revision: str = "main") -> str:
        """The ``resolve`` URL, quoted the way ``huggingface_hub.hf_hub_url`` quotes it."""
        return f"{self.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, once started."""
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        if self._server is not None:
            raise RuntimeError("FakeHub is already started")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"FakeHub:{self.url}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection, so no handler thread outlives the test."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._release.set()
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- used by the handler -------------------------------------------------------------------

    def _log(self, request: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _snapshot(self) -> tuple[Faults, threading.Event]:
        """The faults for one request and the release event of that generation of faults."""
        with self._lock:
            return self._faults, self._release

    def _take_status(self, faults: Faults) -> bool:
        with self._lock:
            if faults.status is None or self._statuses_done >= faults.status_times:
                return False
            self._statuses_done += 1
            return True

    def _take_cut(self, faults: Faults) -> bool:
        with self._lock:
            if self._cuts_done >= faults.cut_times:
                return False
            self._cuts_done += 1
            return True

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_changed:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
            self._connections_changed.notify_all()

    def _wait_connections(self, at_most: int, timeout: float) -> bool:
        """Wait until at most ``at_most`` connections are open: shows a handler has ended."""
        with self._connections_changed:
            return self._connections_changed.wait_for(
                lambda: len(self._connections) <= at_most, timeout
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: FakeHub) -> None:
        self.hub = hub
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client going away is normal (and so is anything once stopping): say nothing."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE) or self.hub._stopping.is_set():
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"
    sys_version = ""

    @property
    def hub(self) -> FakeHub:
        server = self.server
        assert isinstance(server, _Server)
        return server.hub

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for the tests."""

    def setup(self) -> None:
        super().setup()
        self.hub._track(self.connection, True)

    def finish(self) -> None:
        self.hub._track(self.connection, False)
        with contextlib.suppress(*_CLIENT_GONE):
            super().finish()

    def handle(self) -> None:
        try:
            super().handle()
        except _CLIENT_GONE:
            self.close_connection = True
        except OSError:
            if not self.hub._stopping.is_set():
                raise

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_POST(self) -> None:
        self._answer(head=False)

    do_PUT = do_DELETE = do_PATCH = do_POST

    # -- routing -------------------------------------------------------------------------------

    def _answer(self, head: bool) -> None:
        hub = self.hub
        headers = {_title_case(k): v for k, v in self.headers.items()}
        hub._log(LoggedRequest(self.command, self.path, headers))
        faults, release = hub._snapshot()
        try:
            if hub._take_status(faults):
                self._send_fault_status(faults)
                return
            self._route(head, faults, release)
        except _CLIENT_GONE:
            self.close_connection = True

    def _route(self, head: bool, faults: Faults, release: threading.Event) -> None:
        split = urlsplit(self.path)
        segments = split.path.split("/")[1:]
        query = parse_qs(split.query)
        if self.command not in ("GET", "HEAD"):
            self._send_json(405, {"error": "Method not allowed"}, head=head)
        elif len(segments) >= 4 and segments[:2] == ["api", "models"]:
            self._api(segments[2:], query, head)
        elif len(segments) >= 5 and segments[2] == "resolve":
            self._resolve(segments, head, faults, release)
        else:
            self._send_json(404, {"error": "Not Found"}, head=head)

    def _open_repo(self, org: str, name: str, head: bool) -> _Repo | None:
        """The repo if it exists and this request may see it; else answer the error, give None."""
        repo_id = f"{unquote(org)}/{unquote(name)}"
        repo = self.hub._repo(repo_id)
        if repo is None:
            message = f"Repository not found: {repo_id}"
            self._send_error_code(404, "RepoNotFound", message, head=head)
            return None
        token = self.hub.token
        if repo.gated and (token is None or self.headers.get("Authorization") != f"Bearer {token}"):
            message = f"Access to model {repo_id} is restricted: you must be authenticated."
            self._send_error_code(401, "GatedRepo", message, head=head)
            return None
        return repo

    def _check_revision(self, repo: _Repo, revision: str, head: bool) -> bool:
        if repo.has_revision(revision):
            return True
        message = f"Invalid rev id: {revision}"
        self._send_error_code(404, "RevisionNotFound", message, head=head)
        return False

    def _api(self, rest: list[str], query: dict[str, list[str]], head: bool) -> None:
        org, name, tail = rest[0], rest[1], rest[2:]
        if tail and not (
            (tail[0] == "revision" and len(tail) == 2) or (tail[0] == "tree" and len(tail) >= 2)
        ):
            self._send_json(404, {"error": "Not Found"}, head=head)
            return
        repo = self._open_repo(org, name, head)
        if repo is None:
            return
        revision = unquote(tail[1]) if tail else repo.branch
        if not self._check_revision(repo, revision, head):
            return
        if tail and tail[0] == "tree":
            folder = "/".join(unquote(s) for s in tail[2:]).strip("/")
            self._tree(repo, folder, _flag(query, "recursive"), head)
        else:
            self._send_json(200, self._model_info(repo), head=head)

    def _model_info(self, repo: _Repo) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for blob in sorted(repo.files.values(), key=lambda b: b.path):
            sibling: dict[str, Any] = {"rfilename": blob.path, "size": blob.size}
            sibling["blobId"] = blob.blob_id
            if blob.lfs:
                sibling["lfs"] = {
                    "sha256": blob.sha256,
                    "size": blob.size,
                    "pointerSize": blob.pointer_size,
                }
            siblings.append(sibling)
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "lastModified": _LAST_MODIFIED,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, repo: _Repo, folder: str, recursive: bool, head: bool) -> None:
        folders = repo.folders()
        if folder and folder not in folders:
            message = f"{folder} does not exist on {repo.branch}"
            self._send_error_code(404, "EntryNotFound", message, head=head, commit=repo.commit)
            return
        prefix = f"{folder}/" if folder else ""

        def listed(path: str) -> bool:
            if not path.startswith(prefix):
                return False
            return recursive or "/" not in path[len(prefix) :]

        entries: list[dict[str, Any]] = []
        for path in sorted(p for p in folders if listed(p)):
            oid = hashlib.sha1(f"tree {repo.commit} {path}".encode()).hexdigest()
            entries.append({"type": "directory", "path": path, "size": 0, "oid": oid})
        for blob in sorted(
            (b for b in repo.files.values() if listed(b.path)), key=lambda b: b.path
        ):
            entry: dict[str, Any] = {
                "type": "file",
                "path": blob.path,
                "size": blob.size,
                "oid": blob.blob_id,
            }
            if blob.lfs:
                entry["lfs"] = {
                    "oid": blob.sha256,
                    "size": blob.size,
                    "pointerSize": blob.pointer_size,
                }
            entries.append(entry)
        self._send_json(200, entries, head=head)

    # -- resolve -------------------------------------------------------------------------------

    def _resolve(
        self, segments: list[str], head: bool, faults: Faults, release: threading.Event
    ) -> None:
        repo = self._open_repo(segments[0], segments[1], head)
        if repo is None:
            return
        revision = unquote(segments[3])
        if not self._check_revision(repo, revision, head):
            return
        filename = "/".join(unquote(s) for s in segments[4:])
        blob = repo.files.get(filename)
        if blob is None:
            message = f"{filename} does not exist at revision {revision}"
            self._send_error_code(404, "EntryNotFound", message, head=head, commit=repo.commit)
            return

        omit = faults.omit_headers
        total = blob.size
        span: tuple[int, int] | None = None
        if not head and not faults.ignore_range:
            try:
                span = _parse_range(self.headers.get("Range"), total)
            except _Unsatisfiable:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        start, end = span if span is not None else (0, total)

        self.send_response(206 if span is not None else 200)
        if "X-Repo-Commit" not in omit:
            self.send_header("X-Repo-Commit", repo.commit)
        if "ETag" not in omit:
            self.send_header("ETag", blob.etag)
            if blob.lfs:
                self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
        if "Content-Length" not in omit:
            self.send_header("Content-Length", str(end - start))
            if blob.lfs:
                self.send_header("X-Linked-Size", str(total))
        elif not head:
            # No length: the end of the body is where the connection closes.
            self.close_connection = True
            self.send_header("Connection", "close")
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not head:
            self._send_body(blob, start, end, faults, release)

    def _send_body(
        self, blob: _Blob, start: int, end: int, faults: Faults, release: threading.Event
    ) -> None:
        """Write ``[start, end)`` of the file, cut, shortened, stalled or corrupted as asked."""
        stop = end
        if faults.drop_body:
            stop = start
            self.close_connection = True
        if faults.short_body:
            stop = start + (end - start) // 2
            self.close_connection = True
        if _applies_at(faults.cut_after, start, stop) and self.hub._take_cut(faults):
            assert faults.cut_after is not None
            stop = faults.cut_after
            self.close_connection = True
        pos = start
        if _applies_at(faults.stall_after, start, stop):
            assert faults.stall_after is not None
            self._write(blob, pos, faults.stall_after, faults.wrong_bytes)
            pos = faults.stall_after
            if not self._stall(release):
                self.close_connection = True
                return
        self._write(blob, pos, stop, faults.wrong_bytes)

    def _write(self, blob: _Blob, start: int, end: int, invert: bool) -> None:
        if end <= start:
            return
        if blob.source is not None and not invert:
            # The kernel copies file to socket: a benchmark measures the client, not this server.
            with blob.source.open("rb") as f:
                self.connection.sendfile(f, start, end - start)
            return
        for chunk in blob.chunks(start, end, invert):
            self.wfile.write(chunk)

    def _stall(self, release: threading.Event) -> bool:
        """Wait for release; False if the client hung up (or the Hub stops) first."""
        hub = self.hub
        hub.stalled.set()
        while not release.wait(_STALL_POLL_S):
            if hub._stopping.is_set():
                return False
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return False  # orderly close by the client
                except OSError:
                    return False
        return not hub._stopping.is_set()

    # -- plain answers -------------------------------------------------------------------------

    def _send_fault_status(self, faults: Faults) -> None:
        assert faults.status is not None
        self.send_response(faults.status)
        if faults.retry_after is not None:
            self.send_header("Retry-After", faults.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_json(self, status: int, payload: object, *, head: bool) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_error_code(
        self, status: int, code: str, message: str, *, head: bool, commit: str | None = None
    ) -> None:
        """An error the client turns into its own exception type, by ``X-Error-Code``."""
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or ["false"]
    return values[-1].lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    """Serve one file for the download benchmark until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.hub", description="Serve one GGUF file as a Hugging Face Hub repo."
    )
    parser.add_argument("--repo", required=True, help="repo id, org/name")
    parser.add_argument("--file", required=True, type=pathlib.Path, help="file to serve")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    hub = FakeHub(port=args.port)
    hub.add_repo(args.repo, {args.file.name: args.file})
    with hub:
        print(hub.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())


TEST_TOKEN = "hf_test_token"  # what the test Hub accepts for private and gated repositories


def fake_gguf(size: int, seed: int = 0) -> bytes:
    """GGUF magic and noise: enough for pull, which checks bytes and hashes, not weights."""
    return b"GGUF" + hashlib.shake_256(str(seed).encode()).digest(size - 4)
