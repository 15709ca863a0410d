"""`localrun pull` and the store, against a Hub served on 127.0.0.1 by the test suite.

The real huggingface_hub client does the HTTP; nothing is mocked below the HTTP line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from localrun import paths
from localrun.errors import (
    CacheError,
    CorruptDownloadError,
    HubError,
    InsufficientSpaceError,
    LocalrunError,
    NetworkError,
    NotGGUFError,
    QuantNotFoundError,
    UsageError,
)
from localrun.hub import pull, store
from tests.hub import TEST_TOKEN, FakeHub, Faults, fake_gguf
from tests.proc import wait_for
from tests.pulling import Recorder, gets, localrun_cmd
from tests.tinygguf import write_tiny_model

MiB = 1 << 20


# -- references and choices ---------------------------------------------------------


def test_default_quant_lands_in_the_hub_cache_layout(hub: FakeHub, tiny_bytes: bytes) -> None:
    commit = hub.add_repo(
        "org/m-GGUF", {"m-Q8_0.gguf": fake_gguf(1000), "m-Q4_K_M.gguf": tiny_bytes}
    )
    rec = Recorder()
    result = pull.pull("hf.co/org/m-GGUF", reporter=rec)
    m = result.manifest
    assert (m.name, m.quant, m.commit) == ("hf.co/org/m-GGUF", "Q4_K_M", commit)
    sha = hashlib.sha256(tiny_bytes).hexdigest()
    repo = paths.cache_dir() / "hub" / "models--org--m-GGUF"
    link = repo / "snapshots" / commit / "m-Q4_K_M.gguf"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == repo / "blobs" / sha
    assert link.read_bytes() == tiny_bytes
    assert (repo / "refs" / "main").read_text() == commit
    assert m.model_path == link and m.files[0].sha256 == sha
    assert rec.starts == [("m-Q4_K_M.gguf", len(tiny_bytes), 0)]
    assert rec.advanced == len(tiny_bytes)
    assert gets(hub, "m-Q8_0.gguf") == []
    assert list(store.partial_dir().glob("*.part")) == []


def test_pulled_model_runs(hub: FakeHub, tiny_bytes: bytes, cli: Any) -> None:
    hub.add_repo("org/tiny", {"tiny-Q4_K_M.gguf": tiny_bytes})
    result = cli(["run", "hf.co/org/tiny", "--max-tokens", "3", "--format", "json", "hi"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stats"]["completion_tokens"] == 3
    assert "pulling tiny-Q4_K_M.gguf" in result.stderr  # run pulled it first
    again = cli(["run", "hf.co/org/tiny:q4_k_m", "--max-tokens", "1", "hi"])
    assert again.exit_code == 0 and len(gets(hub, "tiny-Q4_K_M.gguf")) == 1


def test_fallback_quant_is_announced(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q8_0.gguf": fake_gguf(500), "m-Q5_K_M.gguf": fake_gguf(400)})
    rec = Recorder()
    assert pull.pull("hf.co/org/m", reporter=rec).manifest.quant == "Q5_K_M"
    assert rec.notes == ["org/m has no Q4_K_M; using Q5_K_M"]


def test_named_quant_and_exact_file(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q8_0.gguf": fake_gguf(500), "sub/m-IQ4_XS.gguf": fake_gguf(300)})
    assert pull.pull("hf.co/org/m:q8_0").manifest.files[0].path == "m-Q8_0.gguf"
    exact = pull.pull("huggingface.co/org/m/sub/m-IQ4_XS.gguf").manifest
    assert exact.model_path.name == "m-IQ4_XS.gguf" and exact.model_path.parent.name == "sub"


def test_missing_quant_lists_what_the_repo_has(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q8_0.gguf": fake_gguf(500), "m-Q4_K_M.gguf": fake_gguf(300)})
    with pytest.raises(QuantNotFoundError, match="has no Q2_K GGUF; it has Q4_K_M, Q8_0"):
        pull.pull("hf.co/org/m:Q2_K")


def test_sharded_model_pulls_every_shard_and_loads_as_one(
    hub: FakeHub, tmp_path: Path, cli: Any
) -> None:
    write_tiny_model(tmp_path / "s.gguf", split_max_tensors=12)
    shards = sorted(tmp_path.glob("s-*.gguf"))
    assert len(shards) == 2
    hub.add_repo("org/split", {p.name.replace("s-", "s-Q4_K_M-"): p.read_bytes() for p in shards})
    m = pull.pull("hf.co/org/split").manifest
    assert [f.path for f in m.files] == [
        "s-Q4_K_M-00001-of-00002.gguf",
        "s-Q4_K_M-00002-of-00002.gguf",
    ]
    assert all(m.file_path(f).exists() for f in m.files)
    result = cli(["run", "hf.co/org/split", "--max-tokens", "2", "hi"])
    assert result.exit_code == 0, result.stderr


# -- verification -------------------------------------------------------------------


def test_wrong_bytes_are_caught_and_deleted(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(4000)})
    hub.faults = Faults(wrong_bytes=True)
    with pytest.raises(CorruptDownloadError) as e:
        pull.pull("hf.co/org/m")
    assert "corrupted download" in e.value.message and e.value.hint == "pull again"
    assert list(store.partial_dir().glob("*.part")) == []
    assert store.all_manifests() == []
    hub.faults = Faults()
    assert pull.pull("hf.co/org/m").manifest.quant == "Q4_K_M"


def test_gguf_named_file_that_is_not_gguf(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": b"<html>not a model</html>" * 50})
    with pytest.raises(NotGGUFError, match="not a GGUF file"):
        pull.pull("hf.co/org/m")
    assert not any(paths.cache_dir().glob("hub/models--org--m/blobs/*"))


def test_non_gguf_file_in_the_repo(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"README.md": b"# hi", "m-Q4_K_M.gguf": fake_gguf(100)})
    with pytest.raises(NotGGUFError, match=r"README\.md"):
        pull.pull("hf.co/org/m/README.md")


def test_missing_response_headers_do_not_matter(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(5000)})
    hub.faults = Faults(omit_headers=frozenset({"X-Repo-Commit", "ETag", "Content-Length"}))
    assert pull.pull("hf.co/org/m").manifest.size == 5000


# -- interrupted downloads ------------------------------------------------------------


def test_dropped_connection_is_resumed_within_the_run(hub: FakeHub) -> None:
    data = fake_gguf(12 * MiB)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": data})
    hub.faults = Faults(cut_after=11 * MiB)
    m = pull.pull("hf.co/org/m").manifest
    assert m.model_path.read_bytes() == data
    ranges = [r.headers.get("Range") for r in gets(hub, "m-Q4_K_M.gguf")]
    assert ranges == [None, f"bytes={11 * MiB}-"]  # resumed at the exact byte


def test_connection_that_keeps_dropping_keeps_the_partial(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:

    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)  # no 1 s pauses in tests
    data = fake_gguf(12 * MiB)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": data})
    # What an earlier, interrupted pull left behind.
    store.partial_dir().mkdir(parents=True)
    part = store.partial_dir() / f"{hashlib.sha256(data).hexdigest()}.part"
    part.write_bytes(data[: 11 * MiB])
    hub.faults = Faults(drop_body=True)  # every connection drops before sending a byte
    with pytest.raises(NetworkError) as e:
        pull.pull("hf.co/org/m")
    assert e.value.hint and "resume" in e.value.hint
    assert pauses == [1, 1, 1, 1, 1]  # five retries, then it gives up
    assert part.stat().st_size == 11 * MiB
    hub.faults = Faults()
    result = pull.pull("hf.co/org/m")
    assert result.resumed_bytes == 11 * MiB and result.downloaded_bytes == MiB
    assert result.manifest.model_path.read_bytes() == data
    assert gets(hub, "m-Q4_K_M.gguf")[-1].headers["Range"] == f"bytes={11 * MiB}-"


def test_server_ignoring_range_restarts_cleanly(hub: FakeHub) -> None:
    data = fake_gguf(3 * MiB)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": data})
    blob = hashlib.sha256(data).hexdigest()
    store.partial_dir().mkdir(parents=True)
    (store.partial_dir() / f"{blob}.part").write_bytes(data[:MiB])
    hub.faults = Faults(ignore_range=True)
    assert pull.pull("hf.co/org/m").manifest.model_path.read_bytes() == data


def partial_size() -> int:
    return sum(p.stat().st_size for p in store.partial_dir().glob("*.part"))


def test_killed_pull_resumes_where_it_stopped(hub: FakeHub, localrun_home: Path) -> None:
    data = fake_gguf(24 * MiB)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": data})
    hub.faults = Faults(stall_after=21 * MiB)
    proc = localrun_cmd(localrun_home, hub, "pull", "hf.co/org/m")
    try:
        assert hub.stalled.wait(30)
        wait_for(lambda: partial_size() >= 21 * MiB)
    finally:
        proc.kill()
        proc.wait()
    hub.faults = Faults()
    result = pull.pull("hf.co/org/m")
    assert result.resumed_bytes == 21 * MiB
    assert gets(hub, "m-Q4_K_M.gguf")[-1].headers["Range"] == f"bytes={21 * MiB}-"
    assert result.manifest.model_path.read_bytes() == data


def test_ctrl_c_exits_130_and_keeps_the_partial(hub: FakeHub, localrun_home: Path) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(12 * MiB)})
    hub.faults = Faults(stall_after=11 * MiB)
    proc = localrun_cmd(localrun_home, hub, "pull", "hf.co/org/m")
    assert hub.stalled.wait(30)
    wait_for(lambda: partial_size() >= 11 * MiB)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    assert partial_size() == 11 * MiB
    assert store.all_manifests() == []


def test_two_pulls_at_once_download_once(hub: FakeHub, localrun_home: Path) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(2 * MiB)})
    hub.faults = Faults(stall_after=MiB)
    first = localrun_cmd(localrun_home, hub, "pull", "hf.co/org/m")
    assert hub.stalled.wait(30)
    second = localrun_cmd(localrun_home, hub, "pull", "hf.co/org/m")
    # The second pull has asked for the metadata and now waits for the first's lock.
    wait_for(lambda: sum(r.path.startswith("/api/") for r in hub.requests) >= 2)
    hub.release_stall()
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    assert len(gets(hub, "m-Q4_K_M.gguf")) == 1
    assert [m.name for m in store.all_manifests()] == ["hf.co/org/m"]


# -- space and memory --------------------------------------------------------------


def test_refuses_when_the_disk_is_too_full(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(5000)})

    class Usage:
        free = 100 * MiB

    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(InsufficientSpaceError, match="not enough disk space") as e:
        pull.pull("hf.co/org/m")
    assert "LOCALRUN_HOME" in (e.value.hint or "")
    assert gets(hub, "m-Q4_K_M.gguf") == []


def test_model_bigger_than_memory_needs_force(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(5000)})
    monkeypatch.setattr(pull, "physical_memory", lambda: 4000)
    with pytest.raises(InsufficientSpaceError, match="memory") as e:
        pull.pull("hf.co/org/m")
    assert "--force" in (e.value.hint or "")
    assert pull.pull("hf.co/org/m", force=True).manifest.size == 5000


# -- errors --------------------------------------------------------------------------


def test_repo_not_found(hub: FakeHub) -> None:
    with pytest.raises(HubError, match="repository org/nope not found"):
        pull.pull("hf.co/org/nope")


def test_gated_repo_mentions_the_token_and_works_with_one(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/gated", {"m-Q4_K_M.gguf": fake_gguf(100)}, gated=True)
    with pytest.raises(HubError, match="gated") as e:
        pull.pull("hf.co/org/gated")
    assert "HF_TOKEN" in (e.value.hint or "") and "hf auth login" in (e.value.hint or "")
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    assert pull.pull("hf.co/org/gated").manifest.size == 100


def test_revision_not_found_and_revision_pinned(hub: FakeHub) -> None:
    commit = hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(100)})
    with pytest.raises(HubError, match="revision 'v9' not found in org/m"):
        pull.pull("hf.co/org/m@v9")
    m = pull.pull(f"hf.co/org/m@{commit}").manifest
    assert m.commit == commit and m.name == f"hf.co/org/m@{commit}"


@pytest.mark.parametrize(("status", "needle"), [(429, "rate-limiting"), (503, "HTTP 503")])
def test_hub_refusals(hub: FakeHub, status: int, needle: str) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(100)})
    hub.faults = Faults(status=status)
    with pytest.raises(HubError, match=needle):
        pull.pull("hf.co/org/m")


def test_network_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(NetworkError, match="cannot reach the Hub"):
        pull.pull("hf.co/org/m")


def test_cache_path_that_is_a_file_names_the_path(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(100)})
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("LOCALRUN_HOME", str(blocker))
    with pytest.raises(CacheError) as e:
        pull.pull("hf.co/org/m")
    assert str(blocker) in e.value.message and "LOCALRUN_HOME" in (e.value.hint or "")


def test_read_only_cache_names_the_path(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root writes anywhere whatever the mode bits, so the file system's answer is simulated.
    import errno

    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(100)})
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
        if paths.cache_dir() in (self, *self.parents) and not self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(CacheError) as e:
        pull.pull("hf.co/org/m")
    assert "Read-only file system" in e.value.message
    assert str(paths.cache_dir()) in e.value.message and "LOCALRUN_HOME" in (e.value.hint or "")


def test_escaping_names_are_refused(hub: FakeHub) -> None:
    with pytest.raises(UsageError):
        pull.pull("hf.co/org/m/../../../../etc/passwd")


# -- offline, and managing the store ------------------------------------------------


def test_pulled_model_runs_offline(
    hub: FakeHub, tiny_bytes: bytes, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/tiny", {"tiny-Q4_K_M.gguf": tiny_bytes})
    pull.pull("hf.co/org/tiny")
    hub.stop()
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(["run", "hf.co/org/tiny", "--max-tokens", "2", "hi"])
    assert result.exit_code == 0, result.stderr
    assert pull.pull("hf.co/org/tiny").up_to_date
    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE"):
        pull.pull("hf.co/org/other")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert cli(["run", "hf.co/org/tiny", "--max-tokens", "1", "hi"]).exit_code == 0
    assert len(hub.requests) == seen


def test_pull_again_is_up_to_date(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(100)})
    assert not pull.pull("hf.co/org/m").up_to_date
    assert pull.pull("hf.co/org/m").up_to_date
    assert len(gets(hub, "m-Q4_K_M.gguf")) == 1


def test_cp_rm_keep_shared_files(hub: FakeHub) -> None:
    data = fake_gguf(3000)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": data, "m-Q8_0.gguf": fake_gguf(2000, seed=1)})
    q4 = pull.pull("hf.co/org/m").manifest
    q8 = pull.pull("hf.co/org/m:Q8_0").manifest
    store.copy(q4, "mine")
    assert [m.name for m in store.all_manifests()] == ["hf.co/org/m", "hf.co/org/m:Q8_0", "mine"]
    assert store.remove("hf.co/org/m") == 0  # "mine" still uses the blob
    assert store.require("mine").model_path.read_bytes() == data
    assert store.remove("mine") == 3000
    assert not q4.blob_path(q4.files[0]).exists()
    assert q8.model_path.exists()
    with pytest.raises(LocalrunError, match="not pulled"):
        store.remove("mine")


def test_verify_finds_and_removes_corruption_and_prune_cleans(hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": fake_gguf(3000)})
    m = pull.pull("hf.co/org/m").manifest
    assert store.verify() == store.VerifyResult(1, [], [])
    blob = m.blob_path(m.files[0])
    blob.write_bytes(b"GGUF" + b"\0" * 2996)
    result = store.verify()
    assert result.corrupt == [("hf.co/org/m", "m-Q4_K_M.gguf")] and not blob.exists()
    assert store.verify().missing == [("hf.co/org/m", "m-Q4_K_M.gguf")]
    # A partial download and a blob no manifest uses.
    (store.partial_dir() / "abc.part").write_bytes(b"x" * 10)
    stray = blob.parent / ("0" * 64)
    stray.write_bytes(b"y" * 20)
    assert store.prune() == store.PruneResult(1, 1, 30)
    assert not stray.exists()
