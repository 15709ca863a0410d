"""A real ``localrun serve`` in a subprocess, on 127.0.0.1 and a free port, for the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.proc import wait_for as wait_for  # the servers' tests poll with it too

LOCALRUN = str(Path(sys.executable).parent / "localrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Background:
    """``localrun ARGS`` running in the background, its stderr collected as it comes."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        program: tuple[str, ...] = (LOCALRUN,),
    ) -> None:
        """``program`` runs localrun: this venv's, or another build's Python with ``-m``."""
        full_env = {**os.environ, "LOCALRUN_HOME": str(home)}
        full_env.pop("LOCALRUN_DEBUG", None)
        full_env.pop("LOCALRUN_HOST", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*program, *args],
            stdout=subprocess.DEVNULL,  # what runs here writes nothing there (logs: stderr)
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self._err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, then a kill if it takes longer than ``timeout``; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


class Server(Background):
    """A running server: its URL, its stderr so far, and a way to stop it."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        program: tuple[str, ...] = (LOCALRUN,),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        super().__init__(home, "serve", "--port", str(self.port), *args, env=env,
                         program=program)  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        """Until ``GET /`` gets an answer, any answer (a server with a key answers 401), or
        the process has ended: then fail with its stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url + "/", timeout=5)
                return
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer within {timeout} s: {self.stderr}")


@contextlib.contextmanager
def serving(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    program: tuple[str, ...] = (LOCALRUN,),
) -> Iterator[Server]:
    server = Server(home, *args, env=env, program=program)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def create_model(home: Path, name: str, modelfile: str) -> None:
    """``localrun create NAME`` in ``home``, from the Modelfile text."""
    path = home / f"{name}.Modelfile"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(modelfile)
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    proc = subprocess.run(
        [LOCALRUN, "create", name, "-f", str(path)], capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
