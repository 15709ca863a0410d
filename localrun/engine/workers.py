"""One model over several machines, with llama.cpp's RPC backend.

:func:`connect` makes RPC workers' devices this process's, so that the offload plan (and
llama.cpp) put layers on them. :class:`Worker` is the other end: this machine's devices
lent to others, as ``localrun worker`` runs it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from localrun.backend.llamacpp import rpc
from localrun.backend.llamacpp.rpc import DEFAULT_PORT, PROTOCOL, Endpoint, parse_endpoints
from localrun.errors import UsageError, WorkerError

if TYPE_CHECKING:
    from localrun.backend.llamacpp.devices import Device

__all__ = ["DEFAULT_PORT", "PROTOCOL", "Endpoint", "Worker", "connect", "parse_endpoints"]

UNAUTHENTICATED_FLAG = "--i-know-rpc-is-unauthenticated"


def connect(endpoints: tuple[Endpoint, ...]) -> list[Device]:
    """Greet each worker and add its devices to llama.cpp's (once a process); its devices."""
    return rpc.add_workers(endpoints) if endpoints else []


# llama.cpp's RPC server says these on stdout, one line each.
_ACCEPTED = "Accepted client connection"
_CLOSED = "Client connection closed"


class Worker:
    """This machine's devices served to other machines' llama.cpp, on a thread.

    The server is llama.cpp's own; its log goes to stdout, which a worker process has no
    other use for: it is read from a pipe and told to ``on_event`` as "connected" and
    "disconnected".
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        n_threads: int,
        cache_dir: Path | None,
        public: bool = False,
    ) -> None:
        if not endpoint.loopback and not public:
            raise UsageError(
                f"llama.cpp's RPC has no authentication or encryption: on {endpoint.host}, "
                "anyone who reaches the port could use this machine's memory and devices",
                "keep --host 127.0.0.1 and reach it through an SSH tunnel, or, inside a "
                f"trusted network only, add {UNAUTHENTICATED_FLAG}",
            )
        self.endpoint = endpoint
        self.n_threads = n_threads
        self.cache_dir = cache_dir
        self.devices = rpc.worker_devices()
        self._thread: threading.Thread | None = None

    def start(self, on_event: Callable[[str], None], timeout: float = 60.0) -> None:
        """Listen; return once clients can connect (a WorkerError if it cannot)."""
        rpc.check_port(self.endpoint)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._log(on_event)
        self._thread = rpc.serve(self.endpoint, self.n_threads, self.cache_dir)
        deadline = time.monotonic() + timeout
        waiting = threading.Event()
        while True:
            if not self._thread.is_alive():
                raise WorkerError(
                    f"llama.cpp's RPC server could not listen on {self.endpoint}",
                    "see the line above; choose another --port or --host",
                )
            try:
                # The first connection, ours: the log skips it.
                socket.create_connection((self.endpoint.host, self.endpoint.port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise WorkerError(
                        f"llama.cpp's RPC server did not listen on {self.endpoint} within "
                        f"{timeout:g} s",
                        "try again; if it persists, run with LOCALRUN_DEBUG=1",
                    ) from None
                waiting.wait(0.05)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _log(self, on_event: Callable[[str], None]) -> None:
        """Read llama.cpp's stdout from a pipe; tell clients coming and going."""
        read, write = os.pipe()
        os.dup2(write, 1)
        os.close(write)

        def follow() -> None:
            probed = False  # the first connection is start()'s check that it listens
            with os.fdopen(read, errors="replace") as lines:
                for raw in lines:
                    line = raw.strip()
                    if line == _CLOSED and not probed:
                        probed = True
                    elif not probed:
                        continue  # llama.cpp's banner: the CLI shows the same, its way
                    elif line == _ACCEPTED:
                        on_event("client connected")
                    elif line == _CLOSED:
                        on_event("client disconnected")
                    elif line:
                        on_event(line)

        threading.Thread(target=follow, name="rpc-worker-log", daemon=True).start()
