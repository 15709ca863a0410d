"""The server's real app, in-process: its real pool loading real GGUFs in llama.cpp, created
as models in the test's home as ``localrun create`` makes them, and the real clients over an
ASGI transport (no port, no process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import openai
from starlette.applications import Starlette

from localrun.models import recipes
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from localrun.server.pool import ModelPool

T = TypeVar("T")


def served(
    home: Path,
    models: dict[str, Path],
    use: Callable[[Starlette], Awaitable[T]],
    *,
    num_ctx: int = 1024,
    **config: Any,
) -> T:
    """``use`` with the app, its pool serving each GGUF of ``models`` under its name (a
    Modelfile with ``num_ctx``); ``config``: ServeConfig's fields (one thread, one sequence
    unless given)."""
    home.mkdir(parents=True, exist_ok=True)
    for name, gguf in models.items():
        modelfile = home / f"{name}.Modelfile"
        modelfile.write_text(f"FROM {gguf}\nPARAMETER num_ctx {num_ctx}\n")
        recipes.create(name, modelfile)
    settings = ServeConfig(**{"parallel": 1, "threads": 1, **config})

    async def go() -> T:
        pool = ModelPool(settings)
        try:
            return await use(create_app(settings, pool))
        finally:
            await pool.close()

    return asyncio.run(go())


def oai(app: Starlette) -> openai.AsyncOpenAI:
    """The ``openai`` client (over its own copy of httpx)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return openai.AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key="x", http_client=http)


def http(app: Starlette) -> httpx.AsyncClient:
    """A plain HTTP client of the app."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
