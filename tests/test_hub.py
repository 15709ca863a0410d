"""The fake Hub speaks the protocol the real ``huggingface_hub`` client expects.

Tests of ``localrun pull`` trust ``tests.hub.FakeHub`` to behave like huggingface.co; these tests
earn that trust by pointing the real client at it, and check each fault switch does what it says.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, constants, file_download, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from huggingface_hub.utils import _http as hf_http

from tests.hub import TEST_TOKEN, FakeHub, Faults

TOKEN = TEST_TOKEN
REPO = "org/model"
SMALL = bytes(range(256)) * 16  # 4 KiB, every byte value
SUB = b"GGUF" + b"\x07" * 1500
INVERT = bytes(b ^ 0xFF for b in range(256))
WAIT_S = 5.0  # bound on every wait for a condition


@pytest.fixture(autouse=True)
def _one_repo(hub: FakeHub) -> None:
    """Every test here starts with one repository on the test Hub (conftest's ``hub``)."""
    hub.add_repo(REPO, {"small.gguf": SMALL, "sub/deep.gguf": SUB})


class RecordedPauses:
    """Stands in for the ``time`` module in the client's download and backoff code.

    The client waits 1 s before it resumes a dropped download, and backs off for seconds on 429
    and 5xx; these tests record the waits instead of spending them, so this file stays fast, and
    they can assert the waits happened.
    """

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> RecordedPauses:
    recorded = RecordedPauses()
    monkeypatch.setattr(file_download, "time", recorded)  # resume after a dropped body
    monkeypatch.setattr(hf_http, "time", recorded)  # backoff on 429 and 5xx
    return recorded


def download(
    hub: FakeHub, filename: str, cache: pathlib.Path, *, revision: str | None = None
) -> bytes:
    """Pull one file of REPO through the real client, without any token, and read it."""
    path = hf_hub_download(
        REPO, filename, revision=revision, endpoint=hub.url, cache_dir=cache, token=False
    )
    return pathlib.Path(path).read_bytes()


def fetch(url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers=headers or {})
    response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=WAIT_S)
    return response


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- metadata ---------------------------------------------------------------------------------


def test_model_info_lists_files_with_lfs_sha256(hub: FakeHub) -> None:
    commit = hub.add_repo(REPO, {"small.gguf": SMALL, "sub/deep.gguf": SUB})
    info = HfApi(endpoint=hub.url, token=False).model_info(REPO, files_metadata=True)
    assert info.id == REPO
    assert info.sha == commit
    assert info.siblings is not None
    by_name = {s.rfilename: s for s in info.siblings}
    assert set(by_name) == {"small.gguf", "sub/deep.gguf"}
    small = by_name["small.gguf"]
    assert small.size == len(SMALL)
    assert small.lfs is not None
    assert small.lfs.sha256 == sha256(SMALL)
    assert small.lfs.size == len(SMALL)
    assert any(r.path == "/api/models/org/model?blobs=true" for r in hub.requests)


def test_model_info_at_a_revision_and_a_plain_git_file(hub: FakeHub) -> None:
    commit = hub.add_repo("org/plain", {"README.md": b"# hi\n"}, lfs=False, branch="dev")
    api = HfApi(endpoint=hub.url, token=False)
    for revision in ("dev", commit):
        info = api.model_info("org/plain", revision=revision, files_metadata=True)
        assert info.sha == commit
        assert info.siblings is not None
        (readme,) = info.siblings
        assert readme.lfs is None
        git_sha1 = hashlib.sha1(b"blob 5\0# hi\n").hexdigest()
        assert readme.blob_id == git_sha1


def test_commit_is_deterministic() -> None:
    files: dict[str, bytes | pathlib.Path] = {"a.gguf": b"a"}
    first = FakeHub().add_repo(REPO, files)
    assert first == FakeHub().add_repo(REPO, files)
    assert len(first) == 40
    assert first != FakeHub().add_repo(REPO, {"a.gguf": b"b"})


def test_list_repo_tree(hub: FakeHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    tree = {entry.path: entry for entry in api.list_repo_tree(REPO, recursive=True)}
    assert set(tree) == {"sub", "small.gguf", "sub/deep.gguf"}
    deep = tree["sub/deep.gguf"]
    assert isinstance(deep, RepoFile)
    assert deep.lfs is not None
    assert deep.lfs.sha256 == sha256(SUB)
    assert deep.size == len(SUB)
    assert isinstance(tree["sub"], RepoFolder)
    top = {entry.path for entry in api.list_repo_tree(REPO)}
    assert top == {"sub", "small.gguf"}
    inside = {entry.path for entry in api.list_repo_tree(REPO, path_in_repo="sub")}
    assert inside == {"sub/deep.gguf"}


# -- downloads --------------------------------------------------------------------------------


def test_download_small_and_subfolder_files(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    assert download(hub, "small.gguf", tmp_path) == SMALL
    assert download(hub, "sub/deep.gguf", tmp_path) == SUB
    storage = tmp_path / "models--org--model"
    commit = (storage / "refs" / "main").read_text()
    assert commit == hub.add_repo(REPO, {"small.gguf": SMALL, "sub/deep.gguf": SUB})
    # The blob is named after X-Linked-Etag, the sha256: the client took the plain HTTP path.
    assert (storage / "blobs" / sha256(SMALL)).is_file()
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert [r.method for r in resolves] == ["HEAD", "GET", "HEAD", "GET"]
    assert all(r.path.startswith("/org/model/resolve/main/") for r in resolves)


def test_download_at_commit_of_plain_file_from_disk(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "config.json"
    source.write_bytes(b'{"a": 1}\n' * 300)
    commit = hub.add_repo("org/disk", {"config.json": source}, lfs=False)
    path = hf_hub_download(
        "org/disk",
        "config.json",
        revision=commit,
        endpoint=hub.url,
        cache_dir=tmp_path / "cache",
        token=False,
    )
    assert pathlib.Path(path).read_bytes() == source.read_bytes()


def test_snapshot_download(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    folder = pathlib.Path(
        snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path, token=False)
    )
    assert (folder / "small.gguf").read_bytes() == SMALL
    assert (folder / "sub" / "deep.gguf").read_bytes() == SUB


# -- errors -----------------------------------------------------------------------------------


def test_unknown_repo(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as raised:
        hf_hub_download("org/nope", "x.gguf", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert not isinstance(raised.value, GatedRepoError)
    assert raised.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("org/nope")


def test_gated_repo_needs_the_token(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    hub.add_repo("org/gated", {"g.gguf": SMALL}, gated=True)
    for token in (False, "wrong"):
        with pytest.raises(GatedRepoError) as raised:
            hf_hub_download(
                "org/gated", "g.gguf", endpoint=hub.url, cache_dir=tmp_path, token=token
            )
        assert raised.value.response.status_code == 401
        with pytest.raises(GatedRepoError):
            HfApi(endpoint=hub.url, token=token).model_info("org/gated")
    path = hf_hub_download("org/gated", "g.gguf", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert pathlib.Path(path).read_bytes() == SMALL
    info = HfApi(endpoint=hub.url, token=TOKEN).model_info("org/gated")
    assert info.gated == "auto"
    assert hub.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_unknown_file(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    with pytest.raises(EntryNotFoundError) as raised:
        download(hub, "missing.gguf", tmp_path)
    assert isinstance(raised.value, RemoteEntryNotFoundError)
    commit = raised.value.response.headers["X-Repo-Commit"]
    # The client records the miss under the commit the Hub named.
    assert (tmp_path / "models--org--model" / ".no_exist" / commit / "missing.gguf").exists()


def test_unknown_revision(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        download(hub, "small.gguf", tmp_path, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="nope")


def test_429_is_an_http_error_with_its_status(hub: FakeHub) -> None:
    hub.faults = Faults(status=429, retry_after="7")
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(endpoint=hub.url, token=False).model_info(REPO)
    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "7"


def test_download_survives_one_429(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    """The client's first HEAD does not retry, its second look does, at once: no backoff sleep."""
    hub.faults = Faults(status=429, status_times=1)
    assert download(hub, "small.gguf", tmp_path) == SMALL
    assert [r.method for r in hub.requests] == ["HEAD", "HEAD", "GET"]


def test_download_gives_up_on_a_lasting_429(
    hub: FakeHub, tmp_path: pathlib.Path, pauses: RecordedPauses
) -> None:
    """Seven HEADs, five backoffs of Retry-After + 1 s, then the client reports "not cached"."""
    hub.faults = Faults(status=429, retry_after="3")
    with pytest.raises(LocalEntryNotFoundError) as raised:
        download(hub, "small.gguf", tmp_path)
    cause = raised.value.__cause__
    assert isinstance(cause, HfHubHTTPError)
    assert cause.response.status_code == 429
    assert [r.method for r in hub.requests] == ["HEAD"] * 7
    assert pauses.pauses == [4.0] * 5


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_status_fault_then_normal(hub: FakeHub, status: int) -> None:
    hub.faults = Faults(status=status, status_times=2, retry_after="1")
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as raised:
            fetch(hub.file_url(REPO, "small.gguf"))
        assert raised.value.code == status
        assert raised.value.headers["Retry-After"] == "1"
        assert raised.value.read() == b""
    assert fetch(hub.file_url(REPO, "small.gguf")).read() == SMALL


@pytest.mark.parametrize(
    ("omitted", "ok"), [("X-Repo-Commit", False), ("ETag", False), ("Content-Length", True)]
)
def test_omitted_headers(hub: FakeHub, tmp_path: pathlib.Path, omitted: str, ok: bool) -> None:
    """Without commit or ETag the client gives up; without a length it downloads to the end."""
    hub.faults = Faults(omit_headers=frozenset({omitted}))
    if ok:
        assert download(hub, "small.gguf", tmp_path) == SMALL
    else:
        with pytest.raises(LocalEntryNotFoundError):
            download(hub, "small.gguf", tmp_path)
    response = fetch(hub.file_url(REPO, "small.gguf"))
    names = {name.lower() for name in response.headers}
    gone = {"etag", "x-linked-etag"} if omitted == "ETag" else {omitted.lower()}
    if omitted == "Content-Length":
        gone.add("x-linked-size")
    assert not names & gone
    assert response.read() == SMALL


# -- bytes on the wire ------------------------------------------------------------------------


def test_head_headers(hub: FakeHub) -> None:
    request = urllib.request.Request(hub.file_url(REPO, "small.gguf"), method="HEAD")
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        headers = response.headers
        assert response.status == 200
        assert len(headers["X-Repo-Commit"]) == 40
        assert headers["X-Linked-Etag"] == f'"{sha256(SMALL)}"'
        assert headers["X-Linked-Size"] == str(len(SMALL))
        assert headers["Content-Length"] == str(len(SMALL))
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Type"] == "application/octet-stream"
        assert "X-Xet-Hash" not in headers


def test_range_requests(hub: FakeHub) -> None:
    url = hub.file_url(REPO, "small.gguf")
    total = len(SMALL)
    with fetch(url, {"Range": "bytes=1000-"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 1000-{total - 1}/{total}"
        assert response.read() == SMALL[1000:]
    with fetch(url, {"Range": "bytes=10-19"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 10-19/{total}"
        assert response.read() == SMALL[10:20]
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(url, {"Range": f"bytes={total}-"})
    assert raised.value.code == 416
    hub.faults = Faults(ignore_range=True)
    with fetch(url, {"Range": "bytes=1000-"}) as response:
        assert response.status == 200
        assert response.read() == SMALL


def test_range_on_a_file_from_disk(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one sendfile/read chunk
    source = tmp_path / "big.gguf"
    source.write_bytes(data)
    hub.add_repo("org/big", {"big.gguf": source})
    with fetch(hub.file_url("org/big", "big.gguf"), {"Range": "bytes=1048570-"}) as response:
        assert response.status == 206
        assert response.read() == data[1048570:]
    hub.faults = Faults(wrong_bytes=True)
    with fetch(hub.file_url("org/big", "big.gguf")) as response:
        assert response.read() == data.translate(INVERT)


def test_download_resumes_after_one_cut(
    hub: FakeHub, tmp_path: pathlib.Path, pauses: RecordedPauses
) -> None:
    """A cut mid-body costs one more GET; the client resumes with Range at what it has written.

    The client writes the body in 10 MiB pieces (``DOWNLOAD_CHUNK_SIZE``): a cut inside the first
    piece restarts from 0 without Range, a cut after it resumes with Range. The file is just over
    10 MiB so that this test shows the resume.
    """
    piece = constants.DOWNLOAD_CHUNK_SIZE
    data = os.urandom(piece + 200 * 1024)
    hub.add_repo(REPO, {"cut.gguf": data})
    hub.faults = Faults(cut_after=piece + 50_000, cut_times=1)
    assert download(hub, "cut.gguf", tmp_path) == data
    gets = [r for r in hub.requests if r.method == "GET"]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={piece}-"
    assert pauses.pauses == [1]


def test_download_restarts_after_a_cut_in_the_first_piece(
    hub: FakeHub, tmp_path: pathlib.Path, pauses: RecordedPauses
) -> None:
    data = os.urandom(200 * 1024)
    hub.add_repo(REPO, {"cut.gguf": data})
    hub.faults = Faults(cut_after=50_000, cut_times=1)
    assert download(hub, "cut.gguf", tmp_path) == data
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [g.headers.get("Range") for g in gets] == [None, None]
    assert pauses.pauses == [1]


def test_cut_closes_the_connection_mid_body(hub: FakeHub) -> None:
    hub.faults = Faults(cut_after=1000, cut_times=2)
    url = hub.file_url(REPO, "small.gguf")
    for _ in range(2):
        with fetch(url) as response, pytest.raises(http.client.IncompleteRead) as raised:
            response.read()
        assert raised.value.partial == SMALL[:1000]
    with fetch(url, {"Range": "bytes=1000-"}) as response:  # resuming at the cut is served
        assert response.read() == SMALL[1000:]
    hub.faults = Faults(cut_after=1000, cut_times=1)
    with fetch(url, {"Range": "bytes=1000-"}) as response:  # starts at the cut: not counted
        assert response.read() == SMALL[1000:]
    with fetch(url) as response, pytest.raises(http.client.IncompleteRead):
        response.read()


def test_short_body(hub: FakeHub) -> None:
    hub.faults = Faults(short_body=True)
    with fetch(hub.file_url(REPO, "small.gguf")) as response:
        assert response.headers["Content-Length"] == str(len(SMALL))
        with pytest.raises(http.client.IncompleteRead) as raised:
            response.read()
    assert raised.value.partial == SMALL[: len(SMALL) // 2]


def test_wrong_bytes_pass_the_clients_size_check(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    hub.faults = Faults(wrong_bytes=True)
    got = download(hub, "small.gguf", tmp_path)
    assert len(got) == len(SMALL)
    assert got != SMALL
    assert got == SMALL.translate(INVERT)


# -- stalls -----------------------------------------------------------------------------------


def test_stall_until_released(hub: FakeHub) -> None:
    hub.faults = Faults(stall_after=1000)
    got: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        with fetch(hub.file_url(REPO, "small.gguf")) as response:
            got.append(response.read())
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert hub.stalled.wait(WAIT_S)
    assert not done.is_set()
    hub.release_stall()
    assert done.wait(WAIT_S)
    thread.join(WAIT_S)
    assert got == [SMALL]


def test_stalled_answer_ends_when_the_client_leaves(hub: FakeHub) -> None:
    hub.faults = Faults(stall_after=100)
    host, port = hub.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
        request = f"GET /{REPO}/resolve/main/small.gguf HTTP/1.1\r\nHost: {host}\r\n\r\n"
        sock.sendall(request.encode())
        assert hub.stalled.wait(WAIT_S)
    # The stalled handler notices the client has gone and ends: no connection stays open.
    assert hub._wait_connections(0, WAIT_S)
    # The Hub still answers, and replacing the faults clears the stall state.
    hub.faults = Faults()
    assert not hub.stalled.is_set()
    assert fetch(hub.file_url(REPO, "small.gguf")).read() == SMALL


# -- plumbing ---------------------------------------------------------------------------------


def test_requests_are_logged_in_order(hub: FakeHub) -> None:
    fetch(hub.file_url(REPO, "small.gguf"), {"range": "bytes=0-0"}).read()
    fetch(f"{hub.url}/api/models/{REPO}/tree/main?recursive=true").read()
    assert [(r.method, r.path) for r in hub.requests] == [
        ("GET", "/org/model/resolve/main/small.gguf"),
        ("GET", "/api/models/org/model/tree/main?recursive=true"),
    ]
    assert hub.requests[0].headers["Range"] == "bytes=0-0"


def test_file_url_quotes_like_the_client(hub: FakeHub) -> None:
    from huggingface_hub import hf_hub_url

    assert hub.file_url(REPO, "sub/deep.gguf", "refs/pr/1") == hf_hub_url(
        REPO, "sub/deep.gguf", revision="refs/pr/1", endpoint=hub.url
    )


def test_runs_as_a_benchmark_server(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "bench.gguf"
    source.write_bytes(SMALL)
    root = pathlib.Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hub", "--repo", "org/bench", "--file", str(source)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with fetch(f"{url}/org/bench/resolve/main/bench.gguf") as response:
            assert response.read() == SMALL
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)
