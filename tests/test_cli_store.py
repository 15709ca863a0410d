"""pull, list, show, rm, cp and cache as a user types them, against the test Hub."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import HubError
from tests.hub import FakeHub, Faults, fake_gguf

SMOLLM2 = "smollm2:135m"  # packaged: listed wherever its package is installed

MiB = 1 << 20


@pytest.fixture
def pulled(hub: FakeHub, tiny_model: Path) -> Iterator[FakeHub]:
    hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_model.read_bytes()})
    yield hub


def test_pull_prints_status_and_few_progress_lines(cli: Any, hub: FakeHub) -> None:
    hub.add_repo("org/big", {"big-Q4_K_M.gguf": fake_gguf(24 * MiB)})
    result = cli(["pull", "hf.co/org/big"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "pulling big-Q4_K_M.gguf (25 MB)"
    assert lines[-2] == "pulling big-Q4_K_M.gguf: 100%"
    assert lines[-1].startswith("hf.co/org/big: pulled 25 MB in ")
    assert lines[-1].endswith("sha256 verified")
    assert len(lines) <= 7  # quarters, not a redraw per chunk
    again = cli(["pull", "hf.co/org/big"])
    assert again.stderr == "hf.co/org/big: up to date (Q4_K_M)\n"


def test_pull_passes_force(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []

    def fake_pull(ref: str, *, force: bool, reporter: object) -> Any:
        seen.append((ref, force))
        raise HubError("stop here", "nothing")

    monkeypatch.setattr("localrun.hub.pull.pull", fake_pull)
    assert cli(["pull", "hf.co/a/b", "--force"]).exit_code == 1
    assert seen == [("hf.co/a/b", True)]


def test_list_show_cp_rm(cli: Any, pulled: FakeHub) -> None:
    assert cli(["pull", "hf.co/org/tiny-GGUF"]).exit_code == 0
    assert cli(["cp", "hf.co/org/tiny-GGUF", "tiny"]).exit_code == 0
    table = cli(["list"]).stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "QUANT", "MODIFIED"]
    # The chat model that comes with the test extras is here too (packaged, not pulled).
    names = [row.split()[0] for row in table[1:]]
    assert names == ["hf.co/org/tiny-GGUF", "smollm2:135m", "tiny"]
    assert "Q4_K_M" in table[1] and "just now" in table[1]
    entries = [e for e in json.loads(cli(["list", "--json"]).stdout) if e["name"] != SMOLLM2]
    assert entries[0]["id"] == entries[1]["id"] and entries[0]["quant"] == "Q4_K_M"
    assert entries[0]["source"] == "pulled" and entries[1]["source"] == "pulled"

    facts = json.loads(cli(["show", "tiny", "--json"]).stdout)
    expected = {
        "name", "path", "size", "sha256", "architecture", "parameters", "quantization",
        "context_length", "layers", "chat_template", "license",
    }  # fmt: skip
    assert expected <= set(facts)
    assert facts["architecture"] == "llama" and facts["layers"] == 2
    assert facts["context_length"] == 2048 and facts["chat_template"] is False
    assert facts["quantization"] == "F32" and facts["sha256"].startswith(entries[0]["id"])
    text = cli(["show", "hf.co/org/tiny-GGUF"]).stdout
    assert "architecture       llama" in text and "chat template      no" in text

    removed = cli(["rm", "hf.co/org/tiny-GGUF"])
    assert removed.stderr == "removed hf.co/org/tiny-GGUF (0 B freed)\n"  # "tiny" keeps it
    assert cli(["run", "tiny", "--max-tokens", "1", "hi"]).exit_code == 0
    assert "freed" in cli(["rm", "tiny"]).stderr
    assert [e["name"] for e in json.loads(cli(["list", "--json"]).stdout)] == [SMOLLM2]


def test_show_of_a_model_not_pulled(cli: Any) -> None:
    result = cli(["show", "hf.co/org/absent"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: model 'hf.co/org/absent' is not pulled")


def test_rm_unknown(cli: Any) -> None:
    result = cli(["rm", "nothing-here"])
    assert result.exit_code == 1 and "model 'nothing-here' not found" in result.stderr
    assert "localrun list" in result.stderr


def test_cache_du_verify_prune(cli: Any, pulled: FakeHub) -> None:
    assert cli(["pull", "hf.co/org/tiny-GGUF"]).exit_code == 0
    du = json.loads(cli(["cache", "du", "--json"]).stdout)
    assert du["models"][0]["name"] == "hf.co/org/tiny-GGUF"
    assert du["blobs_bytes"] == du["models"][0]["size"] and du["partial_bytes"] == 0
    ok = cli(["cache", "verify"])
    assert ok.exit_code == 0 and "checked 1 files: 0 corrupt, 0 missing" in ok.stderr
    path = Path(json.loads(cli(["list", "--json"]).stdout)[0]["path"])
    path.resolve().write_bytes(b"GGUF broken")
    bad = cli(["cache", "verify"])
    assert bad.exit_code == 1 and "corrupt: hf.co/org/tiny-GGUF: tiny-Q4_K_M.gguf" in bad.stderr
    pruned = cli(["cache", "prune"])
    assert pruned.exit_code == 0 and "removed 0 partial downloads" in pruned.stderr


def test_errors_are_one_line(cli: Any, hub: FakeHub) -> None:
    hub.add_repo("org/m", {"m-Q8_0.gguf": fake_gguf(100)})
    cases = [
        (["pull", "hf.co/org/m:Q4_K_M"], 1, "has no Q4_K_M GGUF; it has Q8_0"),
        (["pull", "hf.co/org/none"], 1, "not found on the Hub"),
        (["pull", "hf.co/../../etc"], 2, "not a valid repository"),
        (["cp", "hf.co/org/none", "x"], 1, "not found"),
    ]
    for args, code, needle in cases:
        result = cli(args)
        assert result.exit_code == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Hint: " in lines[0], args
    hub.faults = Faults(status=429)
    assert "rate-limiting" in cli(["pull", "hf.co/org/m"]).stderr


def test_after_verify_removes_a_corrupt_file_every_name_says_pull_again(
    cli: Any, pulled: FakeHub
) -> None:
    assert cli(["pull", "hf.co/org/tiny-GGUF"]).exit_code == 0
    assert cli(["cp", "hf.co/org/tiny-GGUF", "alias"]).exit_code == 0
    path = Path(json.loads(cli(["list", "--json"]).stdout)[0]["path"])
    path.resolve().write_bytes(b"GGUF broken")
    bad = cli(["cache", "verify"])
    # Both names share the file: both are reported corrupt, neither as merely missing.
    assert bad.exit_code == 1
    assert "corrupt: alias: tiny-Q4_K_M.gguf" in bad.stderr
    assert "corrupt: hf.co/org/tiny-GGUF: tiny-Q4_K_M.gguf" in bad.stderr
    assert "missing" not in bad.stderr.replace("0 missing", "")
    assert "localrun pull hf.co/org/tiny-GGUF" in bad.stderr
    listed = cli(["list"])
    assert "alias (files missing)" in listed.stdout
    assert "Warning: alias is missing its files" in listed.stderr
    assert "localrun pull hf.co/org/tiny-GGUF/tiny-Q4_K_M.gguf" in listed.stderr
    ran = cli(["run", "alias", "hi"])
    assert ran.exit_code == 1
    line = ran.stderr.strip()
    assert "is missing tiny-Q4_K_M.gguf" in line and "Hint: pull it again" in line, line
    shown = cli(["show", "alias"])
    assert shown.exit_code == 1 and "pull it again" in shown.stderr
    # A Hub reference is pulled when it is not whole, as when it was never pulled: that
    # repairs both names.
    ran = cli(["run", "hf.co/org/tiny-GGUF", "--max-tokens", "2", "hi"])
    assert ran.exit_code == 0, ran.stderr
    assert "pulling tiny-Q4_K_M.gguf" in ran.stderr
    assert cli(["cache", "verify"]).exit_code == 0
    assert "files missing" not in cli(["list"]).stdout


@pytest.mark.slow
def test_verify_checks_the_demo_model(cli: Any, localrun_home: Path) -> None:
    from localrun.models.demo import demo_model_path

    path = demo_model_path()
    ok = cli(["cache", "verify"])
    assert ok.exit_code == 0 and "checked 1 files: 0 corrupt" in ok.stderr
    stat = path.stat()
    with path.open("r+b") as f:
        f.seek(1_000_000)
        f.write(b"\0" * 16)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and time: only a hash tells
    bad = cli(["cache", "verify"])
    assert bad.exit_code == 1 and "corrupt: demo" in bad.stderr
    assert not path.exists()
    assert demo_model_path() == path  # assembled again, whole
