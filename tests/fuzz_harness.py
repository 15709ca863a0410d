"""Run many localrun command lines, each in a forked child, and report how each ended.

Used by ``tests/test_fuzz.py`` and ``tests/test_fuzz_grammar.py``:
``python -m tests.fuzz_harness CASES.json RESULTS.json [TIMEOUT [JOBS [MEMORY_MB]]]``. The
parent imports localrun once; each case forks, so a case that aborts the process (a failed
GGML_ASSERT) or eats memory is caught and measured on its own: ``os.wait4`` gives each
child's exit status and peak memory. A case is ``{"steps": [[args...], ...], "stdin": str}``:
its steps run in order in one child until one fails.

Up to JOBS children run at once; the parent waits on their pidfds, so a child past TIMEOUT
seconds is killed at its deadline (``timed_out`` in its result) without a timer thread.
MEMORY_MB, when given, caps each child's data (``RLIMIT_DATA``): a case that would eat the
machine fails on its own instead, as a signal or an error.

The fuzz tests draw their cases from one seed per test session (:func:`fuzz_seed`): the
``LOCALRUN_FUZZ_SEED`` environment variable's, else a fresh one. pytest's header names it, and
so does each fuzz test's failure, so that a failure found by chance is replayed exactly.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import random
import resource
import select
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SEED_ENV = "LOCALRUN_FUZZ_SEED"
# One case per core this process may use (taskset and cpusets counted): the cases are
# independent, and each is mostly one process's start and a small model's first decode.
JOBS = len(os.sched_getaffinity(0))


def read_seed(environ: Mapping[str, str]) -> int:
    """The seed ``SEED_ENV`` gives, else a fresh random one."""
    given = environ.get(SEED_ENV, "").strip()
    if not given:
        return random.SystemRandom().randrange(10**9)
    try:
        return int(given)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={given!r} is not a whole number") from None


@functools.cache
def fuzz_seed() -> int:
    """This test session's fuzz seed (read once: every fuzz test and the header share it)."""
    return read_seed(os.environ)


def replay() -> str:
    """How to run the same cases again, for a failure's message."""
    return f"seed {fuzz_seed()}: replay with {SEED_ENV}={fuzz_seed()}"


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
    # A crash in native code (a signal) leaves its Python stack in the case's stderr.
    faulthandler.enable(file=sys.stderr, all_threads=True)
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


@dataclass
class _Running:
    index: int
    case: dict[str, Any]
    pid: int
    pidfd: int
    deadline: float
    started: float
    files: list[IO[bytes]] = field(default_factory=list)
    timed_out: bool = False


def _start(index: int, case: dict[str, Any], timeout: float, memory_mb: int) -> _Running:
    files: list[IO[bytes]] = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115
    pid = os.fork()
    if pid == 0:
        try:
            if memory_mb:
                limit = memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
            _child(case, *(f.fileno() for f in files))
        finally:
            os._exit(99)
    now = time.monotonic()
    return _Running(index, case, pid, os.pidfd_open(pid), now + timeout, now, files)


def _finish(run: _Running) -> dict[str, Any]:
    _, status, _ = os.wait4(run.pid, 0)
    seconds = time.monotonic() - run.started
    os.close(run.pidfd)
    out, err, peak = run.files
    for f in run.files:
        f.seek(0)
    peak_kb = int(peak.read() or 0)
    result = {
        **run.case,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "timed_out": run.timed_out,
        "started": run.started,  # time.monotonic(): an order among the cases
        "seconds": round(seconds, 3),
        "peak_mb": peak_kb / 1024,
        "stdout": out.read().decode(errors="replace"),
        "stderr": err.read().decode(errors="replace"),
    }
    for f in run.files:
        f.close()
    return result


def run_cases(
    cases: list[dict[str, Any]], timeout: float, jobs: int = 1, memory_mb: int = 0
) -> list[dict[str, Any]]:
    """Each case's result, in the cases' order; up to ``jobs`` run at once."""
    results: list[dict[str, Any]] = [{} for _ in cases]
    waiting = list(enumerate(cases))[::-1]
    running: dict[int, _Running] = {}
    while waiting or running:
        while waiting and len(running) < max(1, jobs):
            index, case = waiting.pop()
            run = _start(index, case, timeout, memory_mb)
            running[run.pidfd] = run
        soonest = min(run.deadline for run in running.values())
        ready, _, _ = select.select(list(running), [], [], max(0.0, soonest - time.monotonic()))
        for fd in ready:
            run = running.pop(fd)
            results[run.index] = _finish(run)
        now = time.monotonic()
        for run in running.values():
            if run.deadline <= now and not run.timed_out:
                run.timed_out = True
                run.deadline = now + timeout  # its pidfd is ready once the kill lands
                os.kill(run.pid, signal.SIGKILL)  # not yet waited for: the pid is still its
    return results


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One case's result."""
    return run_cases([case], timeout)[0]


def main() -> None:
    # Imported once, before the forks: what a run imports lazily (llama.cpp's bindings, the
    # engine) would take each child a fifth of a second again.
    import localrun.backend.llamacpp.model
    import localrun.backend.llamacpp.schema
    import localrun.cli
    import localrun.cli.run
    import localrun.engine  # noqa: F401

    cases = json.loads(Path(sys.argv[1]).read_text())
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    jobs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    memory_mb = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    results = run_cases(cases, timeout, jobs, memory_mb)
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
