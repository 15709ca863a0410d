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
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config, pool),
                log_config=_log_config(),
                log_level="info",
                timeout_graceful_shutdown=5,
                server_header=False,
            )
        )
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        sock.close()
