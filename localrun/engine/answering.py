"""What answers messages, wherever it runs: the Answerer interface and its events.

An :class:`Answerer` starts a request of messages and hands back an :class:`Answering`: its
events, in order, and a way to cancel it from any thread. The chat session, ``run --batch``
and the one-shot answer take any Answerer and never ask which it is:
:class:`localrun.engine.answerer.LocalAnswerer` (a model loaded here) or
:class:`localrun.remote.answerer.RemoteAnswerer` (a remote engine's API).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from localrun.backend import SamplingParams
from localrun.engine.reload import Switched
from localrun.engine.types import Called, Event, Request, Stats, ThinkingDelta
from localrun.prompt.template import Message


@dataclass(frozen=True)
class Trimmed:
    """Old messages were dropped so the conversation fits the context."""

    dropped: int
    kept: int


ChatEvent = Event | Trimmed | Called | ThinkingDelta


class Answering(Protocol):
    """An answer under way: its events (text, the statistics last), and how to stop it."""

    def __iter__(self) -> Iterator[ChatEvent]: ...

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        """The events in the event loop the answer was started with."""

    def cancel(self) -> None:
        """Stop the answer; safe from any thread, and after it has ended."""

    def context(self) -> tuple[int, ...] | None:
        """The prompt's tokens and the answer's, once it has ended, for a later request to
        continue (Ollama's ``context``); None where they are not known here."""


class Answerer(Protocol):
    """A model that answers conversations: loaded here, or behind a remote engine's API."""

    @property
    def name(self) -> str: ...

    @property
    def placement(self) -> str:
        """Where it runs, in words ("all 19 layers on the CPU", "remote http://...")."""

    @property
    def n_ctx(self) -> int:
        """The context each answer has (0: not known here)."""

    @property
    def mode(self) -> str:
        """``chat`` (the model's chat template) or ``completion``."""

    @property
    def template(self) -> str | None:
        """The chat template in use, when known here."""

    @property
    def vision(self) -> bool:
        """Whether it may be sent pictures."""

    @property
    def n_seq(self) -> int:
        """How many answers it makes at once."""

    @property
    def load_s(self) -> float:
        """How long its last load took (0: loaded elsewhere)."""

    @property
    def loads_here(self) -> bool:
        """Whether it is loaded by this process (and can be loaded again, or saved FROM)."""

    def greeting(self) -> str: ...

    def about(self) -> list[tuple[str, str]]:
        """What ``/show info`` lists: the model, where it runs."""

    def described(self, stats: Stats, threads: int | None) -> list[tuple[str, str]]:
        """The ``--verbose`` figures of an answer, named, in order."""

    def check_tools(self) -> None:
        """Refuse tools it cannot be offered (the one-line reason why)."""

    def start(
        self,
        request: Request,
        *,
        started: float | None = None,
        trim: bool = False,
        keep: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Answering:
        """Begin answering ``request`` now (from ``started``, for its TTFT), its events read
        with ``async for`` in ``loop`` when one is given. With ``trim``,
        the oldest turns are left out when the conversation does not fit (a
        :class:`Trimmed` event comes first); with ``keep``, the part of the prompt that
        later ones will repeat is kept where the model keeps prompts. A request refused
        before any work (too long, tools it cannot take) raises here."""

    def remember(self, conversation: Sequence[Message], sampling: SamplingParams) -> None:
        """Keep what the next turn of ``conversation`` will read again (where it can)."""

    @property
    def threads(self) -> int | None:
        """The CPU threads it answers on (None: not known here)."""

    @property
    def asked_ctx(self) -> int | None:
        """The context it was loaded with when one was asked for (``num_ctx``)."""

    def reload(self, n_ctx: int) -> list[str]:
        """Load it again with a context of ``n_ctx`` tokens; what the load adjusted."""

    def switch(self, name: str) -> Switched:
        """Become the model ``name`` (loaded again only if its weights differ)."""
