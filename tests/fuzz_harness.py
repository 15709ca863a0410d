"""Run many localrun command lines, each in a forked child, and report how each ended.

Used by ``tests/test_fuzz.py``: ``python -m tests.fuzz_harness CASES.json RESULTS.json``. The
parent imports localrun once; each case forks, so a case that aborts the process (a failed
GGML_ASSERT) or eats memory is caught and measured on its own: ``os.wait4`` gives each
child's exit status and peak memory. A case is ``{"steps": [[args...], ...], "stdin": str}``:
its steps run in order in one child until one fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def _child(case: dict[str, Any], out_fd: int, err_fd: int, peak_fd: int) -> None:
    from localrun.cli import main

    if "home" in case:
        os.environ["LOCALRUN_HOME"] = case["home"]
    stdin = tempfile.TemporaryFile()  # noqa: SIM115 - the child ends with os._exit
    stdin.write(case.get("stdin", "").encode())
    stdin.seek(0)
    os.dup2(stdin.fileno(), 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    code = 0
    for step in case["steps"]:
        code = main(step)
        if code != 0:
            break
    sys.stdout.flush()
    sys.stderr.flush()
    # Its own high-water mark: ru_maxrss would carry the harness's across the fork.
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            os.write(peak_fd, line.split()[1].encode())
    os._exit(code)


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as peak,
    ):
        pid = os.fork()
        if pid == 0:
            try:
                _child(case, out.fileno(), err.fileno(), peak.fileno())
            finally:
                os._exit(99)
        import signal
        import threading

        timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL))
        timer.start()
        _, status, _ = os.wait4(pid, 0)
        timer.cancel()
        out.seek(0)
        err.seek(0)
        peak.seek(0)
        peak_kb = int(peak.read() or 0)
        return {
            **case,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "peak_mb": peak_kb / 1024,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def main() -> None:
    import localrun.cli  # noqa: F401 - imported once, before the forks

    cases = json.loads(Path(sys.argv[1]).read_text())
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    results = [run_case(case, timeout) for case in cases]
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
