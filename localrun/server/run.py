"""Starting the server: bind first (so a taken port is a one-line error), then uvicorn."""

from __future__ import annotations

import asyncio
import copy
import errno
import socket
import sys
from typing import Any

from localrun.errors import LocalrunError, UsageError
from localrun.server.config import ServeConfig


def bind(config: ServeConfig) -> socket.socket:
    """The listening socket, or a one-line error naming the cause."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(
            f"cannot listen on '{config.host}': {e.strerror}",
            "give --host an address of this machine, such as 127.0.0.1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LocalrunError(
                f"port {config.port} on {config.host} is already in use",
                "stop what listens there (another localrun or Ollama?), or use --port",
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(
                f"{config.host} is not an address of this machine",
                "give --host an address of this machine, such as 127.0.0.1 or 0.0.0.0",
            ) from None
        if e.errno == errno.EACCES:
            raise LocalrunError(
                f"not allowed to listen on port {config.port}", "use a port above 1023"
            ) from None
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# A request's line and headers must arrive within this many seconds of the connection
# opening (or of the answer before it on a kept-alive connection): a client that sends a
# header a second, and never ends them, is cut off (slowloris). The body is not timed: it is
# counted against --max-body as it arrives, and a picture may be large on a slow link.
HEAD_TIMEOUT = 10.0
# An idle kept-alive connection is closed after this many seconds (uvicorn's default, named
# here so that it is stated where the other limits are).
KEEP_ALIVE_TIMEOUT = 5


def head_timed(timeout: float = HEAD_TIMEOUT) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's head.

    uvicorn (0.55, checked) has none: its keep-alive timer starts only after a response, and
    every byte received cancels it, so a connection that trickles header lines stays open for
    ever. h11 bounds an unfinished head's size (16 KiB), not its time.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimed(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in: no more deadline
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _expired(self) -> None:
            self.head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadTimed


def uvicorn_config(app: Any, *, head_timeout: float = HEAD_TIMEOUT) -> Any:
    """How localrun runs uvicorn: its log on stderr, its timeouts, no Server header."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=head_timed(head_timeout),
        log_config=_log_config(),
        log_level="info",
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        timeout_graceful_shutdown=5,
        server_header=False,
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, all of it on stderr (its access log goes to stdout by default:
    stdout is for data), and localrun's own server log beside it."""
    from uvicorn.config import LOGGING_CONFIG

    logging = copy.deepcopy(LOGGING_CONFIG)
    logging["handlers"]["access"]["stream"] = "ext://sys.stderr"
    logging["loggers"]["localrun.server"] = {"handlers": ["default"], "level": "INFO"}
    return logging


def serve(config: ServeConfig, preload: tuple[str, ...] = ()) -> None:
    """Serve until Ctrl-C or SIGTERM; the loaded models are freed on the way out."""
    import uvicorn

    from localrun.server.app import create_app
    from localrun.server.pool import ModelPool

    config.check()
    sock = bind(config)

    async def main() -> None:
        pool = ModelPool(config)  # its locks and timers belong to this loop
        try:
            for name in preload:
                runner = await pool.acquire(name, None)
                pool.release(runner, -1)  # kept until the server stops or `localrun stop`
        except BaseException:
            await pool.close()
            raise
        shown = f"[{config.host}]" if ":" in config.host else config.host
        print(
            f"localrun serve: listening on http://{shown}:{config.port} "
            "(Ollama API at /api, OpenAI API at /v1)",
            file=sys.stderr,
            flush=True,
        )
        server = uvicorn.Server(uvicorn_config(create_app(config, pool)))
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        sock.close()
