"""One answer for an HTTP request: its model's runner, the request its answerer starts, the events.

Both APIs come here: :mod:`.ollama` and :mod:`.openai` only translate their requests into an
:class:`Ask` and the events back. Everything that can fail before the first token (an unknown
model, bad options, a prompt too long, a full queue) fails in :meth:`Answer.begin`, so that
the client gets its HTTP status; what fails later ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from starlette.responses import StreamingResponse

from localrun.engine.answering import Answering, Trimmed
from localrun.engine.options import RunOptions, run_options
from localrun.engine.types import (
    Called,
    Event,
    Finished,
    Logprobs,
    PromptEvaluated,
    Request,
    Stats,
    TextDelta,
    ThinkingDelta,
)
from localrun.errors import PromptTooLongError, UsageError
from localrun.models.parameters import per_request
from localrun.prompt.template import Message
from localrun.prompt.tools import Tool, ToolCall
from localrun.server import metrics
from localrun.server.pool import ModelPool, Runner

log = logging.getLogger("localrun.server")


@dataclass(frozen=True)
class Ask:
    """What a request asks of a model, in the engine's terms."""

    model: str
    messages: tuple[Message, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # checked Ollama options
    keep_alive: float | None = None  # seconds; None: the server's default
    system: str | None = None  # replaces the Modelfile's SYSTEM (Ollama generate's "system")
    raw: bool = False  # the prompt read as it is, without the chat template (Ollama's raw)
    context: tuple[int, ...] = ()  # tokens to continue (Ollama generate's "context")
    grammar: str | None = None  # GBNF the answer must match (a format, a response_format)
    tools: tuple[Tool, ...] = ()  # tools the model is offered
    tool_choice: str = "auto"  # auto, none, required, or the name of the tool to call
    ignore_eos: bool = False  # go on past the model's end of text (llama-server's, vLLM's)
    think: bool | str | None = None  # a thinking model's trace: on, off, an effort; None: default
    think_budget: int | None = None  # the most tokens the trace may take
    n: int = 1  # answers to the one prompt (OpenAI's n), each its own sequence and seed
    suffix: str | None = None  # fill in the middle: the text after (the prompt is before)
    template: str | None = None  # its own chat template (Jinja), over the model's
    prompt_logprobs: int | None = None  # the prompt's tokens' log probabilities (echo)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs (OpenAI's)
    logprobs: int | None = None  # each token's log probability, with so many alternatives
    # Leave the oldest turns out when the conversation does not fit (Ollama's truncate, the
    # Responses API's truncation "auto"); False: a prompt too long is refused, never cut.
    truncate: bool = False


@dataclass
class Answer:
    """A request admitted to its model; read :meth:`events` once, to the end."""

    pool: ModelPool
    ask: Ask
    runner: Runner
    answering: Answering
    load_s: float
    stats: Stats | None = None
    calls: tuple[ToolCall, ...] = ()  # once it has finished
    # Its tokens' log probabilities, where asked: all of them (whole), or those whose text
    # has not yet gone out (streamed).
    probs: list[Logprobs] = field(default_factory=list)
    prompt_probs: tuple[Logprobs, ...] = ()  # the prompt's, where asked (echo)
    _closed: bool = False

    @classmethod
    async def begin(cls, pool: ModelPool, ask: Ask) -> Answer:
        """Load the model if need be, and start the answer: the prompt read and queued."""
        start = time.perf_counter()
        predict = ask.options.get("num_predict")
        if predict is not None and predict > pool.config.max_predict:
            raise UsageError(
                f"{predict} tokens to predict is more than this server allows",
                f"ask for at most {pool.config.max_predict} (num_predict, max_tokens)",
            )
        runner = await pool.acquire(ask.model, ask.options.get("num_ctx"))
        load_s = time.perf_counter() - start
        try:
            given = {p.setting: ask.options.get(p.name) for p in per_request()}
            options = run_options(runner.settings, **given, stop=ask.options.get("stop", ()))
            # Reading the prompt (and a grammar, which llama.cpp parses in up to a fraction
            # of a second) happens off the event loop, and off the engine's thread.
            answering = await asyncio.to_thread(
                runner.answerer.start,
                _request(ask, options),
                started=start,
                trim=ask.truncate,
                loop=asyncio.get_running_loop(),
            )
        except BaseException as e:
            pool.release(runner, ask.keep_alive)
            if isinstance(e, PromptTooLongError):
                raise _for_api(e, ask.truncate) from None
            raise
        return cls(pool, ask, runner, answering, load_s if load_s > 0.05 else 0.0)

    async def events(self) -> AsyncIterator[Event | Called | ThinkingDelta]:
        """The answer's events (a trace's only where it was not asked away); the request is
        cancelled if the reader stops early."""
        try:
            async for event in self.answering:
                if isinstance(event, Finished):
                    event.stats.load_s = self.load_s  # this request's wait for the load
                    self.stats = event.stats
                    metrics.answered(self.pool, self.runner.name, event.stats)
                elif isinstance(event, Called):
                    self.calls = event.calls
                elif isinstance(event, PromptEvaluated) and event.logprobs:
                    self.prompt_probs = event.logprobs
                if isinstance(event, Trimmed):  # asked for (Ask.truncate): said in the log
                    self._trimmed(event)
                    continue
                if isinstance(event, ThinkingDelta) and self.ask.think is False:
                    continue  # a model that cannot be asked not to think: its trace unshown
                yield event
        finally:
            self.close()

    def _trimmed(self, event: Trimmed) -> None:
        log.info(
            "%s: %d of the conversation's oldest messages left out to fit a context of %d "
            "tokens (%d kept, the system prompt aside)",
            self.ask.model, event.dropped, self.runner.loaded.seq_ctx, event.kept,
        )  # fmt: skip

    def context(self) -> tuple[int, ...] | None:
        """The prompt's tokens and the answer's (Ollama's ``context``), where known."""
        return self.answering.context()

    def close(self) -> None:
        """Cancel the request if it is still running, and let its model go. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.stats is None:
            self.answering.cancel()
        self.pool.release(self.runner, self.ask.keep_alive)


async def count_tokens(pool: ModelPool, ask: Ask) -> int:
    """The tokens of ``ask``'s prompt as its model would read them (loaded if need be)."""
    from localrun.engine.prompting import prompt_tokens

    runner = await pool.acquire(ask.model, ask.options.get("num_ctx"))
    try:
        options = run_options(runner.settings, stop=ask.options.get("stop", ()))
        request = _request(ask, options)
        return await asyncio.to_thread(prompt_tokens, runner.loaded, request)
    finally:
        pool.release(runner, ask.keep_alive)


def _request(ask: Ask, options: RunOptions) -> Request:
    """The engine's request: the Modelfile's system prompt and messages around the asked
    ones (a request's own system prompt wins), its sampling with the asked grammar."""
    messages = list(ask.messages)
    if not ask.raw:
        if not any(m.role == "system" for m in messages):
            chosen = ask.system if ask.system is not None else options.system
            if chosen:
                messages.insert(0, Message("system", chosen))
        if options.history:
            first_user = 1 if messages and messages[0].role == "system" else 0
            messages[first_user:first_user] = options.history
    sampling = options.sampling
    if ask.grammar is not None:
        sampling = replace(sampling, grammar=ask.grammar)
    if ask.logit_bias:
        sampling = replace(sampling, logit_bias=ask.logit_bias)
    return Request(
        tuple(messages),
        sampling,
        options.max_tokens,
        options.stop,
        tools=ask.tools,
        tool_choice=ask.tool_choice,
        raw=ask.raw,
        context=ask.context,
        stop_at_eog=not ask.ignore_eos,
        think=ask.think if ask.think is not None else options.think,  # the Modelfile's
        think_budget=ask.think_budget if ask.think_budget is not None else options.think_budget,
        logprobs=ask.logprobs,
        suffix=ask.suffix,
        template=ask.template,
        prompt_logprobs=ask.prompt_logprobs,
    )


def _for_api(error: PromptTooLongError, truncated: bool) -> PromptTooLongError:
    """A prompt too long, with the knobs an API client has (the messages name the request's
    own context: the sequence's share, not the whole model's)."""
    larger = (
        "ask for a larger context: options.num_ctx on the Ollama API, num_ctx on /v1, or "
        "PARAMETER num_ctx in the model's Modelfile"
    )
    if truncated:  # what is left (the system prompt, the newest turn) is too long still
        return PromptTooLongError(
            f"{error.message}, even with the oldest turns left out",
            f"shorten the last message; or {larger}",
        )
    return PromptTooLongError(
        error.message,
        f"shorten the prompt; {larger}; or let the server leave the oldest turns out "
        '(truncate: true on /api/chat, truncation: "auto" on /v1/responses)',
    )


Receive = Callable[[], Awaitable[Any]]  # an ASGI receive channel


class Closes(Protocol):
    """What a response holds until it ends: an answer, or several (OpenAI's ``n``)."""

    def close(self) -> None: ...


class AnswerResponse(StreamingResponse):
    """A streamed answer that lets its model go however the response ends: even when the
    client left before the first byte, and the body was never read."""

    def __init__(self, answer: Closes, body: AsyncIterator[bytes], media_type: str) -> None:
        super().__init__(body, media_type=media_type)
        self.answer = answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.answer.close()


class cancel_on_disconnect:
    """While the body runs, a client that disconnects cancels ``answer`` (its sequence is
    freed at the engine's next step), whether or not anything is being sent to it."""

    def __init__(self, receive: Receive, answer: Closes) -> None:
        self.receive = receive
        self.answer = answer
        self.task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.answer.close()
                return

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self._watch())

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()


async def collect(receive: Receive, answer: Answer) -> tuple[str, str, Stats]:
    """The whole answer, its trace (a thinking model's, unless asked for none) and its
    statistics (for a request that does not stream)."""
    parts: list[str] = []
    trace: list[str] = []
    stats: Stats | None = None
    async with cancel_on_disconnect(receive, answer):
        async for event in answer.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
                if event.logprobs is not None:
                    answer.probs.append(event.logprobs)
            elif isinstance(event, ThinkingDelta):
                trace.append(event.text)
            elif isinstance(event, Finished):
                stats = event.stats
    assert stats is not None
    return "".join(parts), "".join(trace), stats


@dataclass(frozen=True)
class Embedded:
    """Texts' embeddings, with the counts and times both APIs report."""

    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float
    total_s: float


async def embed(
    pool: ModelPool,
    model: str,
    texts: list[str],
    *,
    options: dict[str, Any] | None = None,
    keep_alive: float | None = None,
    truncate: bool = True,
    dimensions: int | None = None,
    query: str | None = None,
) -> Embedded:
    """Each text's embedding from ``model``, scaled to length 1 (``dimensions``: cut to its
    first ones, then scaled again), computed by its engine between steps: an embedding
    model's texts many at a pass. With ``query``, ``model`` is a reranker and each text a
    document: its vector is the reranker's raw output, the first value its relevance score.
    A text longer than the context is cut to it (Ollama's rule), or refused without
    ``truncate``."""
    from localrun.engine.embeds import end_tokens, normalized, text_tokens

    start = time.perf_counter()
    if dimensions is not None and dimensions < 1:
        raise UsageError("'dimensions' must be at least 1")
    runner = await pool.acquire(model, (options or {}).get("num_ctx"))
    load_s = time.perf_counter() - start
    try:
        loaded = runner.engine.model
        pooled = loaded.pooling
        if query is not None and pooled != "rank":
            raise UsageError(
                f"{model} is not a reranker", "rerank with a model made for it (bge-reranker)"
            )
        # An embedding model reads each text in one pass (its batch: the trained context).
        limit = loaded.n_batch if pooled else runner.loaded.seq_ctx

        ending = end_tokens(loaded)

        def tokens_of(text: str) -> list[int]:
            return text_tokens(loaded, text, limit, ending, truncate=truncate, query=query)

        all_tokens = await asyncio.to_thread(lambda: [tokens_of(text) for text in texts])
        loop = asyncio.get_running_loop()
        futures = [runner.engine.embed(tokens, loop) for tokens in all_tokens]
        vectors: list[list[float]] = list(await asyncio.gather(*futures))
    finally:
        pool.release(runner, keep_alive)
    if query is None:
        vectors = [normalized(v, dimensions) for v in vectors]
    count = sum(len(t) for t in all_tokens)
    return Embedded(vectors, count, load_s if load_s > 0.05 else 0.0, time.perf_counter() - start)
