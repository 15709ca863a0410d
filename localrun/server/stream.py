"""One answer onto the wire, for every API: streamed (NDJSON or server-sent events) or whole.

An API is a converter (:mod:`.ollama`, :mod:`.openai`): a request body to an :class:`Ask`,
and a :class:`Reply` that turns an answer's events into the API's objects. This module holds
the one loop that writes any converter's objects, framed as its wire frames them; a new API
brings its converter and names its wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.engine.types import (
    Called,
    Event,
    Finished,
    Logprobs,
    Stats,
    TextDelta,
    ThinkingDelta,
)
from localrun.errors import LocalrunError
from localrun.prompt.tools import ToolCall
from localrun.server.answer import Answer, AnswerResponse, Ask, cancel_on_disconnect, collect
from localrun.server.pool import ModelPool

Obj = dict[str, Any]


@dataclass(frozen=True)
class Done:
    """A finished answer, as an API's last object reports it."""

    stats: Stats
    text: str = ""  # the whole answer, when it was not streamed
    calls: tuple[ToolCall, ...] = ()  # the tools it called
    context: tuple[int, ...] | None = None  # the prompt's and answer's tokens; None: pictures
    thinking: str = ""  # a thinking model's whole trace, when it was not streamed
    logprobs: tuple[Logprobs, ...] = ()  # each token's, where asked, when it was not streamed
    prompt_logprobs: tuple[Logprobs, ...] = ()  # the prompt's tokens', where asked (echo)


class Reply(Protocol):
    """An API's converter of one answer's events into its objects (plain functions of them)."""

    def opening(self) -> list[Obj]:
        """What a stream begins with, before any event."""
        ...

    def piece(self, text: str, probs: Sequence[Logprobs] = ()) -> list[Obj]:
        """A piece of the answer's text (and its tokens' log probabilities, where asked)."""
        ...

    def thinking(self, text: str) -> list[Obj]:
        """A piece of a thinking model's trace."""
        ...

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        """The tools the answer called (just before it finishes)."""
        ...

    def last(self, done: Done) -> list[Obj]:
        """What a stream ends with."""
        ...

    def whole(self, done: Done) -> Obj:
        """The answer that was not streamed, in one object."""
        ...

    def error(self, error: LocalrunError) -> Obj:
        """An error, in the API's shape (after the response began: the stream's last)."""
        ...


@dataclass(frozen=True)
class Wire:
    """How a stream frames its objects."""

    media_type: str
    before: bytes  # each object's prefix
    after: bytes  # and suffix
    end: bytes = b""  # after the last object (not after an error)
    named: bool = False  # each event named after its object's "type" (Anthropic's, Responses')

    def frame(self, obj: Obj) -> bytes:
        data = self.before + json.dumps(obj, ensure_ascii=False).encode() + self.after
        return (
            b"event: " + str(obj.get("type", "error")).encode() + b"\n" + data
            if self.named
            else data
        )


NDJSON = Wire("application/x-ndjson", b"", b"\n")  # Ollama's: one object a line
SSE = Wire("text/event-stream", b"data: ", b"\n\n", b"data: [DONE]\n\n")  # OpenAI's
NAMED_SSE = Wire("text/event-stream", b"data: ", b"\n\n", named=True)  # typed events, no [DONE]


def done_of(answer: Answer, stats: Stats, text: str = "", thinking: str = "") -> Done:
    """What the converters see of a finished answer."""
    return Done(stats, text, answer.calls, answer.context(), thinking, tuple(answer.probs),
                answer.prompt_probs)  # fmt: skip


def chunks(reply: Reply, event: Event | Called | ThinkingDelta, answer: Answer) -> list[Obj]:
    """An event's objects on the wire (none for the events an API does not show)."""
    if isinstance(event, TextDelta):
        if event.logprobs is not None:
            answer.probs.append(event.logprobs)
        if not event.text:
            return []  # a token's text held back: its log probability goes with the text
        probs, answer.probs = answer.probs, []
        return reply.piece(event.text, probs)
    if isinstance(event, ThinkingDelta):
        return reply.thinking(event.text) if event.text else []
    if isinstance(event, Called):
        return reply.called(event.calls)
    if isinstance(event, Finished):
        return reply.last(done_of(answer, event.stats))
    return []


def stream(request: Request, answer: Answer, reply: Reply, wire: Wire) -> Response:
    """The answer's objects as they come, framed by ``wire``; a client that leaves cancels
    it; an error after the response began ends the stream with the API's error object."""

    async def body() -> AsyncIterator[bytes]:
        try:
            for obj in reply.opening():
                yield wire.frame(obj)
            async with cancel_on_disconnect(request.receive, answer):
                async for event in answer.events():
                    for obj in chunks(reply, event, answer):
                        yield wire.frame(obj)
            if wire.end:
                yield wire.end
        except LocalrunError as e:
            yield wire.frame(reply.error(e))

    return AnswerResponse(answer, body(), wire.media_type)


async def respond(
    request: Request, pool: ModelPool, ask: Ask, reply: Reply, wire: Wire, *, streaming: bool
) -> Response:
    """Answer ``ask`` (what fails before the first token fails here, with its status), as a
    stream or in one object."""
    if ask.n > 1:  # only OpenAI's converters ask for several, and their replies choose
        from localrun.server.choices import respond_choices

        return await respond_choices(request, pool, ask, reply, wire, streaming=streaming)  # type: ignore[arg-type]
    answer = await Answer.begin(pool, ask)
    if streaming:
        return stream(request, answer, reply, wire)
    text, thinking, stats = await collect(request.receive, answer)
    return JSONResponse(reply.whole(done_of(answer, stats, text, thinking)))
