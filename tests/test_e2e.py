"""End to end: the installed ``localrun`` command, in a subprocess, on the demo model."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

LOCALRUN = str(Path(sys.executable).parent / "localrun")
PR_CAPBSET_DROP = 24  # <linux/prctl.h>
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # <linux/capability.h>


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the session, so the 253 MB demo model is assembled once."""
    return tmp_path_factory.mktemp("e2e-home")


def localrun(
    home: Path,
    *args: str,
    stdin: str | bytes = b"",
    timeout: float = 120,
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_DEBUG", None)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [LOCALRUN, *args],
        input=data,
        capture_output=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def run_json(home: Path, *args: str, stdin: str = "") -> dict[str, object]:
    proc = localrun(home, "run", "demo", "--format", "json", *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_piped_prompt_streams_plain_text(e2e_home: Path) -> None:
    proc = localrun(
        e2e_home, "run", "demo", "--max-tokens", "12", "--seed", "1", stdin="The sky is\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and proc.stdout.endswith("\n")
    assert "\x1b" not in proc.stdout + proc.stderr  # no colour codes when piped
    assert proc.stderr == ""  # llama.cpp's own logging stays off the user's stderr


def test_stdin_then_arguments_is_one_prompt(e2e_home: Path) -> None:
    greedy = ("--temperature", "0", "--max-tokens", "8")
    piped = run_json(e2e_home, *greedy, "Summarize:", stdin="Notes about the sky.\n")
    joined = run_json(e2e_home, *greedy, "Notes about the sky.\n\nSummarize:")
    assert piped["response"] == joined["response"]
    assert piped["stats"]["prompt_tokens"] == joined["stats"]["prompt_tokens"]  # type: ignore[index]


def test_json_stats_are_consistent(e2e_home: Path) -> None:
    data = run_json(e2e_home, "--max-tokens", "16", "--seed", "3", "Why is the sky blue?")
    assert data["model"] == "demo" and data["mode"] == "completion"
    stats = data["stats"]
    assert isinstance(stats, dict)
    assert stats["completion_tokens"] == 16 and stats["finish_reason"] == "length"
    assert stats["prompt_tokens"] > 3
    assert 0 < stats["prefill_s"] <= stats["ttft_s"] < stats["total_s"]
    assert stats["load_s"] > 0 and stats["decode_s"] > 0
    assert stats["decode_tokens_per_s"] == pytest.approx(15 / stats["decode_s"])
    assert stats["prefill_tokens_per_s"] == pytest.approx(
        stats["prompt_tokens"] / stats["prefill_s"]
    )


def test_same_seed_same_answer(e2e_home: Path) -> None:
    args = ("--max-tokens", "24", "--temperature", "1.0", "Once upon a time")
    a = run_json(e2e_home, "--seed", "7", *args)
    b = run_json(e2e_home, "--seed", "7", *args)
    c = run_json(e2e_home, "--seed", "8", *args)
    assert a["response"] == b["response"]
    assert a["response"] != c["response"]


def test_verbose_names_the_mode_and_figures(e2e_home: Path) -> None:
    proc = localrun(e2e_home, "run", "demo", "--max-tokens", "4", "--verbose", "Hello")
    assert proc.returncode == 0
    assert "completion (the model has no chat template)" in proc.stderr
    for name in ("load time:", "TTFT:", "tok/s", "total time:"):
        assert name in proc.stderr


def test_chat_template_model_runs_in_chat_mode(e2e_home: Path, tiny_chat_model: Path) -> None:
    proc = localrun(e2e_home, "run", str(tiny_chat_model), "--max-tokens", "4", "--verbose", "hi")
    assert proc.returncode == 0, proc.stderr
    assert "chat (the model's chat template)" in proc.stderr


def test_ctrl_c_stops_within_a_moment(e2e_home: Path) -> None:
    # Make sure the demo model is assembled, so the timing below is generation only.
    assert localrun(e2e_home, "run", "demo", "--max-tokens", "1", "x").returncode == 0
    env = {**os.environ, "LOCALRUN_HOME": str(e2e_home)}
    proc = subprocess.Popen(
        [LOCALRUN, "run", "demo", "--seed", "2", "--temperature", "1.5", "Tell a long story:"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        first = os.read(proc.stdout.fileno(), 4096)
        assert first
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    rest = proc.stdout.read()
    err = proc.stderr.read().decode()
    assert code == 130
    assert elapsed < 2.0
    assert (first + rest).endswith(b"\n")
    assert "Traceback" not in err


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and "Hint: " in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert proc.stdout == ""


def test_missing_file(e2e_home: Path, tmp_path: Path) -> None:
    proc = localrun(e2e_home, "run", str(tmp_path / "absent.gguf"), "hi")
    one_line_error(proc, 1, "not found")


def test_directory(e2e_home: Path, tmp_path: Path) -> None:
    one_line_error(localrun(e2e_home, "run", str(tmp_path), "hi"), 1, "is a directory")


def test_not_gguf(e2e_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some text\n")
    one_line_error(localrun(e2e_home, "run", str(path), "hi"), 1, "not a GGUF model file")


def test_truncated_gguf(e2e_home: Path, tmp_path: Path) -> None:
    full = next((e2e_home / "cache" / "demo").glob("*.gguf"), None)
    if full is None:
        assert localrun(e2e_home, "run", "demo", "--max-tokens", "1", "x").returncode == 0
        full = next((e2e_home / "cache" / "demo").glob("*.gguf"))
    cut = tmp_path / "cut.gguf"
    with full.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(150_000_000))
    # Found reading its header (for the default context), before llama.cpp opens it.
    one_line_error(
        localrun(e2e_home, "run", str(cut), "hi"), 1, "is truncated: its tensors end at byte",
        "but the file has 150,000,000", "download or copy the model again",
    )  # fmt: skip


def as_a_user() -> None:
    """In a child of root, before exec: drop the capabilities by which root reads and searches
    any file whatever its mode, so that the command meets permissions as any user does."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.parametrize(
    ("locked", "needle"), [("file", "cannot read"), ("folder", "permission denied: ")]
)
def test_unreadable(
    e2e_home: Path, tmp_path: Path, tiny_model: Path, locked: str, needle: str
) -> None:
    """A model file this user may not read (mode 000), or in a folder it may not search: one
    line that says so. As root too (CI runs as root): the command runs without root's power
    to read any file, as any other user would."""
    folder = tmp_path / "folder"
    folder.mkdir()
    path = folder / "m.gguf"
    path.write_bytes(tiny_model.read_bytes())
    (path if locked == "file" else folder).chmod(0)
    try:
        probe = [sys.executable, "-c", f"open({str(path)!r}, 'rb')"]
        tried = subprocess.run(probe, capture_output=True, text=True, preexec_fn=as_a_user)
        assert "PermissionError" in tried.stderr, "the file is readable: nothing to test"
        proc = localrun(e2e_home, "run", str(path), "hi", preexec=as_a_user)
        one_line_error(proc, 1, "permission denied", str(path), needle)
    finally:
        folder.chmod(0o700)  # so that pytest can remove it


def test_prompt_longer_than_context(e2e_home: Path) -> None:
    proc = localrun(e2e_home, "run", "demo", "--ctx", "256", stdin="word " * 2000)
    one_line_error(proc, 1, "tokens but the context holds only 256", "--ctx")


def test_unknown_flag_value(e2e_home: Path) -> None:
    proc = localrun(e2e_home, "run", "demo", "--format", "xml", "hi")
    one_line_error(proc, 2, "'--format'")


def test_no_prompt(e2e_home: Path) -> None:
    one_line_error(localrun(e2e_home, "run", "demo"), 2, "no prompt")


def test_unknown_model_name(e2e_home: Path) -> None:
    one_line_error(localrun(e2e_home, "run", "llama99", "hi"), 1, "unknown model 'llama99'")
