"""A remote engine as an answerer: the chat and --batch use it as they use a local model.

The engine keeps no state between requests: each turn sends the whole conversation, as any
OpenAI client does, and the engine's own prefix cache (vLLM's, llama-server's) makes that
cheap there. Nothing is tokenized here: an engine refuses a conversation too long for its
context itself. Each answer is read in a thread of its own, so that answers started together
(a --batch file) are made together by the engine's scheduler, --parallel at a time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from localrun.backend import SamplingParams
from localrun.engine.answerer import ChatEvent
from localrun.engine.figures import remote_figures
from localrun.engine.reload import Switched
from localrun.engine.types import Finished, Request, Stats
from localrun.errors import UsageError
from localrun.prompt.template import Message
from localrun.remote.client import generate
from localrun.remote.registry import Remote

Item = ChatEvent | BaseException | None  # an event, the reader's error, or the end
DEFAULT_PARALLEL = 8  # answers read at once: the engine's own scheduler batches them


class _Remote:
    """One answer from the engine, read in a daemon thread (a reader still waiting on a
    stalled engine never holds the process's exit); its events wait in a queue."""

    def __init__(self, slots: threading.BoundedSemaphore, remote: Remote, request: Request,
                 send: frozenset[str], loop: asyncio.AbstractEventLoop | None) -> None:  # fmt: skip
        self._stop = threading.Event()
        self._events: queue.SimpleQueue[Item] | asyncio.Queue[Item]
        self._put: Callable[[Item], Any]
        if loop is None:
            self._events = queue.SimpleQueue()
            self._put = self._events.put
        else:  # handed to the loop's thread, where async for reads them
            events: asyncio.Queue[Item] = asyncio.Queue()
            self._events = events
            self._put = lambda item: loop.call_soon_threadsafe(events.put_nowait, item)
        args = (slots, remote, request, send)
        threading.Thread(target=self._read, args=args, name="remote", daemon=True).start()

    def _read(self, slots: threading.BoundedSemaphore, remote: Remote, request: Request,
              send: frozenset[str]) -> None:  # fmt: skip
        try:
            with slots:  # --parallel answers at a time; the others wait their turn here
                if self._stop.is_set():
                    return
                # Leaving the loop drops the generator as this returns: its connection is
                # closed and the engine stops answering.
                for event in generate(remote, request, send):
                    if self._stop.is_set():
                        break
                    self._put(event)
        except BaseException as e:  # handed to the reader, who raises it
            self._put(e)
        finally:
            self._put(None)

    def __iter__(self) -> Iterator[ChatEvent]:
        assert isinstance(self._events, queue.SimpleQueue), "started with a loop: use async for"
        try:
            while (item := self._events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self._stop.set()

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        assert isinstance(self._events, asyncio.Queue), "started without a loop: use for"
        try:
            while (item := await self._events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self._stop.set()

    def cancel(self) -> None:
        self._stop.set()

    def context(self) -> None:
        """The engine's tokens are not known here."""


class RemoteAnswerer:
    """Answers with a remote engine's OpenAI-compatible API (vLLM, llama-server, another
    localrun). Only the sampling settings chosen are sent: the engine keeps its own
    defaults, or its model's, for the rest."""

    loads_here = False
    n_ctx = 0  # the engine's, not known here
    mode = "chat"
    template = None  # the engine's own, not known here
    vision = True  # the engine says whether its model reads them
    load_s = 0.0
    threads = None  # the engine's
    asked_ctx = None

    def __init__(
        self, remote: Remote, *, send: frozenset[str] = frozenset(), parallel: int | None = None
    ) -> None:
        self.remote = remote
        self.send = send  # the sampling settings given to the command
        self.n_seq = parallel or DEFAULT_PARALLEL
        self._slots = threading.BoundedSemaphore(self.n_seq)

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def placement(self) -> str:
        return f"remote {self.remote.url}"

    def greeting(self) -> str:
        return f"{self.name}: {self.remote.model} at {self.remote.url}"

    def about(self) -> list[tuple[str, str]]:
        return [("model", self.remote.model), ("engine", self.remote.url)]

    def described(self, stats: Stats, threads: int | None) -> list[tuple[str, str]]:
        return remote_figures(stats)

    def check_tools(self) -> None:
        raise UsageError("tools with a remote engine are not supported yet", "use a local model")

    def start(
        self,
        request: Request,
        *,
        started: float | None = None,
        trim: bool = False,
        keep: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> _Remote:
        if request.tools:
            self.check_tools()
        if request.raw or request.context:
            raise UsageError(
                "a raw prompt or a context of tokens cannot be sent to a remote engine",
                "send messages",
            )
        send = self.send | request.given
        return _Remote(self._slots, self.remote, request, send, loop)

    def remember(self, conversation: Sequence[Message], sampling: SamplingParams) -> None:
        """Nothing to keep here: the engine has its own cache."""

    def reload(self, n_ctx: int) -> list[str]:
        raise _loads_here("a context size")

    def switch(self, name: str) -> Switched:
        raise _loads_here("another model")


def _loads_here(what: str) -> UsageError:
    return UsageError(
        f"loading {what} happens here; the remote engine loads its own",
        "run a local model for it",
    )
