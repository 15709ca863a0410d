"""Every request's checks, before any handler runs: Host, Origin, API key, body size.

Servers like this one are found exposed by the hundred thousand, and a browser page can
reach a server on 127.0.0.1 through DNS rebinding (a name of the attacker's that resolves to
127.0.0.1: the request then carries the attacker's name in its Host header) or through a
plain cross-origin request. So a request must name this server in its Host header, a
browser's Origin must be one the server was told to allow, and past loopback every request
needs the API key. Bodies are counted as they arrive, so a large one is refused unread.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from localrun.errors import (
    ForbiddenError,
    LocalrunError,
    PayloadTooLargeError,
    UnauthorizedError,
    UsageError,
)
from localrun.server.config import ServeConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Uploads of a model's weights (Ollama's POST /api/blobs/DIGEST), gigabytes: their handler
# bounds them by the store's free disk (localrun.server.blobs), not by --max-body.
UPLOADS = "/api/blobs/"
log = logging.getLogger("localrun.server")


def error_body(path: str, error: LocalrunError) -> dict[str, Any]:
    """An error in the shape of the API the path belongs to (OpenAI's or Ollama's)."""
    from localrun.server import anthropic, ollama, openai  # the converters: after the checks

    if path.startswith("/v1/messages"):
        return anthropic.error(error)
    return openai.error(error) if path.startswith("/v1/") else ollama.error(error)


async def send_error(scope: Scope, send: Send, error: LocalrunError) -> None:
    """Answer with ``error`` as JSON, with its status (and Retry-After when it has one)."""
    body = json.dumps(error_body(scope.get("path", ""), error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, UnauthorizedError):
        headers.append((b"www-authenticate", b"Bearer"))
    retry = getattr(error, "retry_after", None)
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _internal(scope: Scope, exc: Exception) -> LocalrunError:
    """An unexpected error as one line in the server's log (the traceback with
    ``LOCALRUN_DEBUG=1``) and a 500 for the client."""
    debug = os.environ.get("LOCALRUN_DEBUG") == "1"
    log.error(
        "internal error on %s: %s", scope.get("path", ""), exc, exc_info=exc if debug else None
    )
    hint = "see the server's log" if debug else "LOCALRUN_DEBUG=1 shows the traceback in its log"
    return LocalrunError(f"internal error: {exc}", hint)


def _host_name(value: str) -> str:
    """The name in a Host header, without its port (``[::1]:11434`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware refusing, with a one-line error, what the settings do not allow."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        self.hosts = set(LOOPBACK_NAMES) | {h.lower() for h in config.allow_hosts}
        self.hosts.add(config.host.lower().strip("[]"))
        if not config.loopback:
            name = socket.gethostname().lower()
            self.hosts |= {name, f"{name}.local"}
        self.origins = set(config.allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check(scope, headers)
        except LocalrunError as e:
            await send_error(scope, send, e)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            uploads = scope.get("path", "").startswith(UPLOADS)
            await self.app(scope, receive if uploads else self._counted(receive), tracked)
        except Exception as e:  # a bug, not the client's fault: a 500, and the server goes on
            error = e if isinstance(e, LocalrunError) else _internal(scope, e)
            if not started:
                await send_error(scope, send, error)

    def _check(self, scope: Scope, headers: dict[str, str]) -> None:
        host = headers.get("host")
        if host is None:
            raise UsageError("the request has no Host header", "send HTTP/1.1 with a Host header")
        name = _host_name(host)
        server = scope.get("server") or ("", 0)
        if "*" not in self.hosts and name not in self.hosts and name != str(server[0]).lower():
            raise ForbiddenError(
                f"this server does not answer to the host name '{name}'",
                "call it by its address, or start it with --allow-host NAME",
            )
        origin = headers.get("origin")
        if origin is not None and "*" not in self.origins and origin not in self.origins:
            raise ForbiddenError(
                f"requests from web pages at {origin} are not allowed",
                f"start the server with --allow-origin {origin} to allow them",
            )
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        key = self.config.api_key
        if key and not preflight:
            given = headers.get("authorization", "")
            other = headers.get("x-api-key", "")  # Anthropic's clients send the key here
            # The headers' own bytes (decoded as latin-1 above) against the key's UTF-8.
            bearer = hmac.compare_digest(given.encode("latin-1"), f"Bearer {key}".encode())
            if not bearer and not hmac.compare_digest(other.encode("latin-1"), key.encode()):
                raise UnauthorizedError(
                    "this server needs an API key",
                    "send the header 'Authorization: Bearer KEY' (OPENAI_API_KEY, OLLAMA_API_KEY)"
                    " or 'x-api-key: KEY' (ANTHROPIC_API_KEY)",
                )
        length = headers.get("content-length")
        if scope.get("path", "").startswith(UPLOADS):
            return
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body):
            raise self._too_large()

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is larger than this server's limit of {self.config.max_body} bytes",
            "send less, or start the server with a larger --max-body",
        )

    def _counted(self, receive: Receive) -> Receive:
        """``receive``, refusing a body (chunked, without a length) once it passes the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.config.max_body:
                    raise self._too_large()
            return message

        return counted
