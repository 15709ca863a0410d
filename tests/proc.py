"""Running the installed ``localrun`` command in a subprocess, with its own peak memory.

The peak is the process's own ``VmHWM`` (its memory's high-water mark), sampled while it runs.
``getrusage``'s ``ru_maxrss`` would not do: Linux carries it across fork and exec, so a child of
a test process that has loaded a model reports that process's peak as its own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOCALRUN = str(Path(sys.executable).parent / "localrun")


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str
    peak_mb: float


def run(
    home: Path,
    *args: str,
    stdin: bytes | None = b"",
    shell_suffix: str = "",
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Done:
    """Run ``localrun ARGS`` (with ``env`` added to this environment), and measure its own
    peak memory."""
    full = {k: v for k, v in os.environ.items() if k != "LOCALRUN_DEBUG"}  # ours, not env's
    full |= {"LOCALRUN_HOME": str(home), **(env or {})}
    if shell_suffix:  # redirections such as '<&-' need a shell
        quoted = " ".join(quote(a) for a in (LOCALRUN, *args))
        argv = ["/bin/sh", "-c", f"exec {quoted} {shell_suffix}"]
    else:
        argv = [LOCALRUN, *args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full,
    )
    outputs: dict[str, bytes] = {}

    def drain(name: str, stream: IO[bytes]) -> None:
        outputs[name] = stream.read()

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    peak = [0]
    watcher = threading.Thread(target=_watch_peak, args=(proc.pid, peak))
    watcher.start()
    try:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin or b"")
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        _, status, _ = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Done(
        proc.returncode,
        outputs["out"].decode(errors="replace"),
        outputs["err"].decode(errors="replace"),
        peak[0] / 1024,
    )


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """A process's peak resident memory (VmHWM) in KiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _watch_peak(pid: int, peak: list[int]) -> None:
    """Sample the child's VmHWM until it exits (the mark only grows: the last one is the peak)."""
    while True:
        kb = vm_hwm_kb(pid)
        try:
            ended = Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
        except OSError:  # reaped between the two reads
            ended = True
        if kb is None or ended:
            return
        peak[0] = max(peak[0], kb)
        time.sleep(0.005)


def wait_for(
    condition: Callable[[], object], timeout: float = 60, what: str = "the condition"
) -> None:
    """Poll ``condition()`` until it is true, within a generous bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # a poll interval, not a wait for something to happen
    raise AssertionError(f"{what} did not happen within {timeout} s")
