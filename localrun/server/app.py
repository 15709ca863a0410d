"""The ASGI application: the guard, the two APIs, and one error shape per API."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import LocalrunError
from localrun.server.config import ServeConfig
from localrun.server.guard import Guard, error_body
from localrun.server.ollama import OllamaAPI
from localrun.server.openai import OpenAIAPI
from localrun.server.pool import ModelPool

log = logging.getLogger("localrun.server")


def _json_error(request: Request, error: LocalrunError) -> Response:
    headers = {}
    retry = getattr(error, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(request.url.path, error), error.http_status, headers=headers)


async def _handled(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LocalrunError)
    return _json_error(request, exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug, not the client's fault: a 500 with its cause, and the server goes on."""
    debug = os.environ.get("LOCALRUN_DEBUG") == "1"
    log.error("internal error on %s: %s", request.url.path, exc, exc_info=exc if debug else None)
    hint = "see the server's log" if debug else "LOCALRUN_DEBUG=1 shows the traceback in its log"
    return _json_error(request, LocalrunError(f"internal error: {exc}", hint))


def create_app(config: ServeConfig, pool: ModelPool | None = None) -> Starlette:
    """The server's application over ``pool`` (a new one for ``config`` if not given)."""
    pool = pool or ModelPool(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await pool.close()

    middleware = [Middleware(Guard, config=config)]
    if config.allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.allow_origins),
                allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    handlers: dict[Any, Any] = {LocalrunError: _handled, Exception: _unexpected}
    app = Starlette(
        routes=OllamaAPI(pool, config).routes() + OpenAIAPI(pool).routes(),
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.pool = pool
    return app
