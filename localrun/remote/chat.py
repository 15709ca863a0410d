"""A chat with a remote engine: the same commands and view, the answers from its API.

The engine keeps no state between requests: each turn sends the whole conversation, as any
OpenAI client does, and the engine's own prefix cache (vLLM's, llama-server's) makes that
cheap there. Nothing is tokenized here: an engine refuses a conversation too long for its
context itself, and the chat shows its error and goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from localrun.engine.chat import ChatEvent, ChatSession, Options
from localrun.engine.types import Finished, Request, TextDelta
from localrun.errors import LocalrunError, UsageError
from localrun.prompt.template import Message
from localrun.remote.client import generate
from localrun.remote.registry import Remote


class RemoteChatSession(ChatSession):
    """:class:`ChatSession`, answered by a remote engine."""

    def __init__(
        self,
        remote: Remote,
        *,
        system: str | None = None,
        options: Options | None = None,
        messages: list[Message] | None = None,
        send: frozenset[str] = frozenset(),
    ) -> None:
        self.remote = remote
        self.send = send  # the sampling settings given: the engine's own for the others
        self.system = system
        self.options = options or Options()
        self.messages = list(messages or [])
        self.last_stats = None
        self.tools = ()

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def placement(self) -> str:
        return f"remote {self.remote.url}"

    @property
    def n_ctx(self) -> int:
        return 0

    @property
    def mode(self) -> str:
        return "chat"

    @property
    def template(self) -> str | None:
        return None  # the engine's own, not known here

    @property
    def vision(self) -> bool:
        return True  # the engine says whether its model reads them

    def greeting(self) -> str:
        return f"{self.name}: {self.remote.model} at {self.remote.url}"

    def set_parameter(self, name: str, value: str) -> str:
        """As the local chat's, and the setting is sent from now on."""
        key = super().set_parameter(name, value)
        self.send = self.send | {key}
        return key

    def load_tools(self, path: Path) -> int:
        raise UsageError("tools with a remote engine are not supported yet", "use a local model")

    def remember(self) -> None:
        """Nothing to keep here: the engine has its own cache."""

    def _answer(self) -> Iterator[ChatEvent]:
        start = time.perf_counter()
        conversation = self._conversation(self.messages)
        request = Request(
            tuple(conversation),
            self.options.sampling,
            self.options.max_tokens,
            self.options.stop,
        )
        return self._remote_stream(request, start)

    def _remote_stream(self, request: Request, start: float) -> Iterator[ChatEvent]:
        parts: list[str] = []
        answered = False
        try:
            for event in generate(self.remote, request, self.send):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    self.last_stats = event.stats
                    answered = True
                yield event
        except LocalrunError:
            if not parts:
                self.messages.pop()  # not answered at all: the question goes too
            raise
        finally:
            if parts or answered:
                self.messages.append(Message("assistant", "".join(parts)))
