"""What the pull tests share: a progress reporter that records, the downloads a test Hub
served, and ``localrun`` pulling in a subprocess (to be killed or interrupted midway)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hub import FakeHub, LoggedRequest


class Recorder:
    """A pull's progress reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.starts: list[tuple[str, int, int]] = []
        self.advanced = 0

    def note(self, text: str) -> None:
        self.notes.append(text)

    def start_file(self, name: str, total: int, done: int) -> None:
        self.starts.append((name, total, done))

    def advance(self, n: int) -> None:
        self.advanced += n

    def end_file(self) -> None:
        pass


def gets(hub: FakeHub, filename: str) -> list[LoggedRequest]:
    """The GET requests ``hub`` served for ``filename``, in order."""
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith("/" + filename)]


def localrun_cmd(home: Path, hub: FakeHub, *args: str) -> subprocess.Popen[bytes]:
    """``localrun ARGS`` started in ``home`` against ``hub``; the caller waits for it."""
    env = {**os.environ, "LOCALRUN_HOME": str(home), "HF_ENDPOINT": hub.url}
    return subprocess.Popen(
        [sys.executable, "-m", "localrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
