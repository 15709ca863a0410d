"""A fake model pool for the server's converters: the app runs in-process (httpx's ASGI
transport), its one model "tiny" a :class:`tests.scripted.ScriptedModel` (the prompt's
tokens) under the server's real :class:`~localrun.engine.answerer.LocalAnswerer`, its engine
answering each request with scripted events. Shared by the tests of every API's converter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from localrun.engine.answerer import LocalAnswerer
from localrun.engine.load import LoadedModel
from localrun.engine.types import Event, Finished, FinishReason, FirstToken, Job, Stats, TextDelta
from localrun.errors import ModelNotFoundError
from localrun.models.resolve import Settings
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from localrun.server.pool import ModelPool
from tests.scripted import ScriptedModel


def stats_of(reason: FinishReason = FinishReason.STOP) -> Stats:
    return Stats(prompt_tokens=5, completion_tokens=2, decode_s=0.5, total_s=1.0,
                 finish_reason=reason)  # fmt: skip


def hello() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta("Hel", 1), TextDelta("", 1), TextDelta("lo", 2),
            Finished(stats_of())]  # fmt: skip


class FakeStream:
    """A request's scripted events (an exception in them is raised where it stands)."""

    def __init__(self, events: list[Event | BaseException]) -> None:
        self.events = events
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        for event in self.events:
            if isinstance(event, BaseException):
                raise event
            yield event

    @property
    def tokens(self) -> list[int]:
        return [7, 8]

    def cancel(self) -> None:
        self.cancelled = True


class FakeEngine:
    """Takes jobs and answers each with the script."""

    alive = True

    def __init__(self, script: Callable[[], list[Event | BaseException]]) -> None:
        self.script = script
        self.jobs: list[Job] = []
        self.streams: list[FakeStream] = []

    def submit(self, job: Job, loop: Any = None) -> FakeStream:
        self.jobs.append(job)
        self.streams.append(FakeStream(self.script()))
        return self.streams[-1]

    def compile_grammar(self, grammar: str) -> object:
        return object()

    def free_grammar(self, compiled: object) -> None:
        pass


@dataclass
class FakeLoaded:
    model: ScriptedModel
    speculate: int = 0
    name: str = "tiny"
    load_s: float = 0.0

    @property
    def template(self) -> str | None:
        return self.model.chat_template

    @property
    def seq_ctx(self) -> int:
        return self.model.n_ctx


class FakeAnswerer(LocalAnswerer):
    """The server's own answerer, over a fake engine."""

    def __init__(self, loaded: FakeLoaded, engine: FakeEngine) -> None:
        super().__init__(cast(LoadedModel, loaded), counts_load=False)
        self.fake = engine

    @property
    def engine(self) -> Any:
        return self.fake


@dataclass(eq=False)
class FakeRunner:
    name: str
    loaded: FakeLoaded
    engine: FakeEngine
    settings: Settings = field(default_factory=Settings)

    @property
    def answerer(self) -> FakeAnswerer:
        return FakeAnswerer(self.loaded, self.engine)


class FakePool(ModelPool):
    """One model, "tiny", always loaded; what was asked of the pool is kept."""

    def __init__(self, config: ServeConfig, runner: FakeRunner) -> None:
        super().__init__(config)
        self.runner = runner
        self.calls: list[tuple[str, Any]] = []

    async def acquire(self, name: str, num_ctx: int | None) -> Any:
        if name != "tiny":
            raise ModelNotFoundError(f"model '{name}' not found", "see GET /api/tags")
        self.calls.append(("acquire", num_ctx))
        return self.runner

    def release(self, runner: Any, keep_alive: float | None) -> None:
        self.calls.append(("release", keep_alive))

    async def unload(self, name: str) -> bool:
        self.calls.append(("unload", name))
        return True


@dataclass
class Served:
    pool: FakePool
    engine: FakeEngine
    post: Callable[[str, dict[str, Any]], httpx.Response]


def serve(
    script: Callable[[], list[Event | BaseException]],
    template: str | None = None,
    n_ctx: int = 256,
) -> Served:
    """The app over a pool whose one model, "tiny", answers each request with ``script()``
    (its chat template ``template``, its context ``n_ctx`` tokens: one a byte)."""
    engine = FakeEngine(script)
    model = ScriptedModel([], chat_template=template, n_ctx=n_ctx)
    runner = FakeRunner("tiny", FakeLoaded(model), engine)
    config = ServeConfig()
    pool = FakePool(config, runner)

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=create_app(config, pool))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.post(path, json=body)

        return asyncio.run(call())

    return Served(pool, engine, post)


def lines_of(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.text.splitlines()]


def events_of(r: httpx.Response) -> list[Any]:
    """A server-sent event stream's data: objects, and "[DONE]" as it is."""
    assert r.text.endswith("\n\n")
    found = []
    for block in r.text.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block[len("data: ") :]
        found.append(data if data == "[DONE]" else json.loads(data))
    return found
