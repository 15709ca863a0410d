"""OpenAI's ``n``: several answers to one prompt, each its own sequence of the model's
batching engine with its own seed, decoded side by side (one pass over the weights a step
for all of them).

The prompt is read once: the first answer starts alone, and the others start once it has
read its prompt, so that each finds the prompt in the first one's cells and copies them
(``llama_memory_seq_cp``) instead of reading it again. A model with sliding-window layers
cannot copy cells its source has moved past: there each answer reads the prompt, in the same
steps. Streamed, each choice's chunks carry its ``index`` as they come; whole, the choices
come in order. The usage counts the prompt once and every choice's tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.engine.types import (
    Finished,
    FirstToken,
    PromptEvaluated,
    Stats,
    TextDelta,
    ThinkingDelta,
)
from localrun.errors import LocalrunError
from localrun.server.answer import Answer, AnswerResponse, Ask, cancel_on_disconnect
from localrun.server.pool import ModelPool
from localrun.server.stream import Done, Reply, Wire, chunks, done_of

MAX_N = 16  # answers a request may ask for (each is a sequence of the model's engine)
_SEEDS = 0xFFFFFFFF  # llama.cpp's seeds are 32 bits (and this one means "random")


class Chooser(Reply, Protocol):
    """A Reply that can speak for one of several choices."""

    def choice(self, index: int) -> Reply:
        """This reply for the choice at ``index`` (the same id; no usage of its own)."""
        ...


class Several:
    """The answers of one request: closed together (a client that leaves cancels them all)."""

    def __init__(self, answers: Sequence[Answer]) -> None:
        self.answers = list(answers)

    def close(self) -> None:
        for answer in self.answers:
            answer.close()


def _nth(ask: Ask, index: int) -> Ask:
    """The ask of the choice at ``index``: a seed given is the first choice's, the next
    ones count on from it; none given, each draws its own."""
    seed = ask.options.get("seed")
    if index == 0 or seed is None or seed < 0:
        return ask
    return dataclasses.replace(ask, options={**ask.options, "seed": (seed + index) % _SEEDS})


async def _begin(pool: ModelPool, ask: Ask) -> tuple[Several, list[AsyncIterator[Any]]]:
    """All the answers started, the first one's prompt read before the others start; and
    each one's events (the first one's from its beginning)."""
    first = await Answer.begin(pool, _nth(ask, 0))
    several = Several([first])
    events = first.events()
    held: list[Any] = []
    try:
        async for event in events:
            held.append(event)
            if isinstance(event, (PromptEvaluated, FirstToken, Finished)):
                break
        for index in range(1, ask.n):
            several.answers.append(await Answer.begin(pool, _nth(ask, index)))
    except BaseException:
        several.close()
        raise

    async def again() -> AsyncIterator[Any]:
        for event in held:
            yield event
        async for event in events:
            yield event

    return several, [again(), *(a.events() for a in several.answers[1:])]


async def _merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Each stream's events as they come, with its index; an error in one ends them all."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    ended = object()

    async def pump(index: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except BaseException as e:
            await queue.put((index, e))
        finally:
            await queue.put((index, ended))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            index, event = await queue.get()
            if event is ended:
                left -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _combined(stats: list[Stats]) -> Stats:
    """The request's figures: the first answer's, with every choice's tokens."""
    total = dataclasses.replace(stats[0])
    total.completion_tokens = sum(s.completion_tokens for s in stats)
    total.thinking_tokens = sum(s.thinking_tokens for s in stats)
    return total


async def respond_choices(
    request: Request, pool: ModelPool, ask: Ask, reply: Chooser, wire: Wire, *, streaming: bool
) -> Response:
    """``ask.n`` answers to ``ask``, streamed (chunks by index) or whole (choices in order)."""
    several, streams = await _begin(pool, ask)
    replies = [reply.choice(i) for i in range(ask.n)]
    if streaming:
        body = _stream(request, several, streams, replies, reply, wire)
        return AnswerResponse(several, body, wire.media_type)
    texts: list[list[str]] = [[] for _ in replies]
    traces: list[list[str]] = [[] for _ in replies]
    finished: list[Stats | None] = [None] * ask.n
    async with cancel_on_disconnect(request.receive, several):
        async for index, event in _merged(streams):
            if isinstance(event, Finished):
                finished[index] = event.stats
            elif isinstance(event, ThinkingDelta):
                traces[index].append(event.text)
            elif isinstance(event, TextDelta):
                texts[index].append(event.text)
                if event.logprobs is not None:
                    several.answers[index].probs.append(event.logprobs)
    stats = [s for s in finished if s is not None]
    wholes = [
        one.whole(done_of(answer, s, "".join(text), "".join(trace)))
        for one, answer, s, text, trace in zip(
            replies, several.answers, stats, texts, traces, strict=True
        )
    ]
    whole = wholes[0] | {"choices": [c for w in wholes for c in w["choices"]]}
    whole["usage"] = reply.whole(Done(_combined(stats)))["usage"]
    return JSONResponse(whole)


async def _stream(
    request: Request,
    several: Several,
    streams: list[AsyncIterator[Any]],
    replies: list[Reply],
    reply: Reply,
    wire: Wire,
) -> AsyncIterator[bytes]:
    finished: list[Stats] = []
    try:
        for one in replies:
            for obj in one.opening():
                yield wire.frame(obj)
        async with cancel_on_disconnect(request.receive, several):
            async for index, event in _merged(streams):
                if isinstance(event, Finished):
                    finished.append(event.stats)
                for obj in chunks(replies[index], event, several.answers[index]):
                    yield wire.frame(obj)
        usage = [o for o in reply.last(Done(_combined(finished))) if not o.get("choices")]
        for obj in usage:  # the usage chunk, where asked: the request's, once
            yield wire.frame(obj)
        if wire.end:
            yield wire.end
    except LocalrunError as e:
        yield wire.frame(reply.error(e))
