"""Running the installed ``localrun`` command in a subprocess, with its own peak memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
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
    home: Path, *args: str, stdin: bytes | None = b"", shell_suffix: str = "", timeout: float = 120
) -> Done:
    """Run ``localrun ARGS``, and measure its own peak memory (os.wait4 gives it)."""
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_DEBUG", None)
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
        env=env,
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
    try:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin or b"")
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Done(
        proc.returncode,
        outputs["out"].decode(errors="replace"),
        outputs["err"].decode(errors="replace"),
        usage.ru_maxrss / 1024,
    )


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
