"""The ASGI application: the guard, the two APIs, and one error shape per API."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localrun.errors import LocalrunError
from localrun.server.config import ServeConfig
from localrun.server.guard import Guard, error_body
from localrun.server.pool import ModelPool
from localrun.server.routes import OllamaAPI, OpenAIAPI

log = logging.getLogger("localrun.server")


def _json_error(request: Request, error: LocalrunError) -> Response:
    # Why, in the server's log too: uvicorn's access line says only "400 Bad Request".
    log.info("%s %s: %s", error.http_status, request.url.path, error.message)
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
                allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
            )
        )
    # Unexpected errors are the guard's to answer (a 500 and one log line), not Starlette's,
    # which would log their tracebacks whatever LOCALRUN_DEBUG says.
    handlers: dict[Any, Any] = {LocalrunError: _handled}
    routes = OllamaAPI(pool, config).routes() + OpenAIAPI(pool).routes()
    if config.metrics:
        from localrun.server.metrics import Counted, Metrics

        metrics = Metrics(pool)
        routes.append(Route("/metrics", metrics.page, methods=["GET"]))
        # Outside the guard: what it refuses (401, 403, 413) is counted too.
        paths = [r.path for r in routes if isinstance(r, Route)]
        middleware.insert(0, Middleware(Counted, metrics=metrics, paths=paths))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.pool = pool
    return app
