"""One answer for an HTTP request: its model's runner, its prompt's tokens, the engine's events.

Both APIs come here: :mod:`.ollama` and :mod:`.openai` only translate their requests into an
:class:`Ask` and the events back. Everything that can fail before the first token (an unknown
model, bad options, a prompt too long, a full queue) fails in :meth:`Answer.begin`, so that
the client gets its HTTP status; what fails later ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.responses import StreamingResponse

from localrun.backend import ImageChunk
from localrun.engine.batch import Stream
from localrun.engine.options import run_options
from localrun.engine.stream import watched
from localrun.engine.types import Called, Event, Finished, Job, Stats, TextDelta
from localrun.errors import NoVisionError, PromptTooLongError, UsageError
from localrun.models.parameters import per_request
from localrun.prompt.build import (
    conversation_prompt,
    keep_point,
    tokenize_bounded,
    tokenize_with_images,
)
from localrun.prompt.template import Message
from localrun.prompt.tools import CallWatch, Tool, ToolCall, call_grammar, form_of
from localrun.server.pool import ModelPool, Runner


@dataclass(frozen=True)
class Ask:
    """What a request asks of a model, in the engine's terms."""

    model: str
    messages: tuple[Message, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # checked Ollama options
    keep_alive: float | None = None  # seconds; None: the server's default
    system: str | None = None  # replaces the Modelfile's SYSTEM (Ollama generate's "system")
    raw: str | None = None  # a prompt to read as it is, without the chat template
    context: tuple[int, ...] = ()  # tokens to continue (Ollama generate's "context")
    grammar: str | None = None  # GBNF the answer must match (a format, a response_format)
    tools: tuple[Tool, ...] = ()  # tools the model is offered
    tool_choice: str = "auto"  # auto, none, required, or the name of the tool to call
    ignore_eos: bool = False  # go on past the model's end of text (llama-server's, vLLM's)


@dataclass
class Answer:
    """A request admitted to its model's engine; read :meth:`events` once, to the end."""

    pool: ModelPool
    ask: Ask
    runner: Runner
    prompt: list[int]
    stream: Stream
    load_s: float
    images: int = 0  # pictures in the prompt
    tokens: list[int] = field(default_factory=list)  # the answer's, once it has finished
    stats: Stats | None = None
    watch: CallWatch | None = None  # with tools: holds back the text of calls, and reads them
    calls: tuple[ToolCall, ...] = ()  # once it has finished
    _closed: bool = False

    @classmethod
    async def begin(cls, pool: ModelPool, ask: Ask) -> Answer:
        """Load the model if need be, read the prompt, and queue it on the engine."""
        start = time.perf_counter()
        predict = ask.options.get("num_predict")
        if predict is not None and predict > pool.config.max_predict:
            raise UsageError(
                f"{predict} tokens to predict is more than this server allows",
                f"ask for at most {pool.config.max_predict} (num_predict, max_tokens)",
            )
        runner = await pool.acquire(ask.model, ask.options.get("num_ctx"))
        load_s = time.perf_counter() - start
        compiled: object | None = None
        try:
            given = {p.setting: ask.options.get(p.name) for p in per_request()}
            options = run_options(runner.settings, **given, stop=ask.options.get("stop", ()))
            tools, watch, calls_grammar = _offer(runner, ask)
            chosen = calls_grammar or ask.grammar
            if calls_grammar and ask.grammar:
                raise UsageError(
                    "a required tool call and a response format cannot go together",
                    "drop one of them",
                )
            if chosen is not None:
                options = replace(options, sampling=replace(options.sampling, grammar=chosen))
                # llama.cpp's parse takes up to a fraction of a second within the prompt
                # layer's limits: off the event loop, and off the engine thread.
                compiled = await asyncio.to_thread(runner.engine.compile_grammar, chosen)
            read = await asyncio.to_thread(
                _tokens, runner, ask, options.system, options.history, tools
            )
            prompt, keep = read.tokens, read.keep
            job = Job(
                prompt,
                options.sampling,
                max_tokens=options.max_tokens,
                stop=options.stop,
                stop_at_eog=not ask.ignore_eos,
                submitted=start,
                cache_at=keep,
                speculate=runner.loaded.speculate,
                special=watch is not None,
                images=read.images,
                grammar=compiled,
            )
            stream = runner.engine.submit(job, loop=asyncio.get_running_loop())
        except BaseException as e:
            if compiled is not None:  # the engine never took it
                runner.engine.free_grammar(compiled)
            pool.release(runner, ask.keep_alive)
            if isinstance(e, PromptTooLongError):
                raise _for_api(e) from None
            raise
        load = load_s if load_s > 0.05 else 0.0
        return cls(pool, ask, runner, prompt, stream, load, len(read.images), watch=watch)

    async def events(self) -> AsyncIterator[Event | Called]:
        """The engine's events; the request is cancelled if the reader stops early."""
        try:
            async for event in self.stream:
                if isinstance(event, Finished):
                    event.stats.load_s = self.load_s
                    self.stats = event.stats
                    self.tokens = self.stream.tokens
                for shown in watched(self.watch, event):
                    if isinstance(shown, Called):
                        self.calls = shown.calls
                    yield shown
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the request if it is still running, and let its model go. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.stats is None:
            self.stream.cancel()
        self.pool.release(self.runner, self.ask.keep_alive)


def _for_api(error: PromptTooLongError) -> PromptTooLongError:
    """A prompt too long, with the knob an API client has (the messages name the request's
    own context: the sequence's share, not the whole model's)."""
    return PromptTooLongError(
        error.message,
        "shorten the prompt, or ask for a larger context: options.num_ctx on the Ollama API, "
        "or PARAMETER num_ctx in the model's Modelfile",
    )


def _offer(runner: Runner, ask: Ask) -> tuple[tuple[Tool, ...], CallWatch | None, str | None]:
    """The tools the prompt offers, the watch that reads calls out of the answer, and the
    grammar of a required call (None when the call is the model's choice)."""
    if not ask.tools or ask.tool_choice == "none":
        return (), None, None
    template = runner.loaded.template
    form = form_of(template)
    if form is None:
        why = (
            "writes tool calls in a form localrun does not read yet"
            if template and "tools" in template
            else "does not take tools: its chat template has no place for them"
        )
        raise UsageError(
            f"{ask.model} {why}",
            "use a model that does (such as qwen2.5, llama3.2 or mistral), or send no tools",
        )
    watch = CallWatch(form, ask.tools)
    if ask.tool_choice == "auto":
        return ask.tools, watch, None
    chosen = ask.tools
    if ask.tool_choice != "required":
        chosen = tuple(t for t in ask.tools if t.name == ask.tool_choice)
        if not chosen:
            raise UsageError(
                f"tool_choice names {ask.tool_choice!r}, which is not among the tools",
                "name one of the tools, or use auto, none or required",
            )
    return ask.tools, watch, call_grammar(form, chosen)


@dataclass
class _Read:
    """A request's prompt as the engine takes it."""

    tokens: list[int]
    keep: int  # how many tokens are worth keeping in the prompt cache
    images: dict[int, ImageChunk]


def _tokens(
    runner: Runner,
    ask: Ask,
    system: str | None,
    history: tuple[Message, ...],
    tools: tuple[Tool, ...] = (),
) -> _Read:
    """The prompt's tokens and pictures, and how many tokens are worth keeping in the prompt
    cache (the system prompt and the earlier messages: a restarted server starts warm)."""
    loaded = runner.loaded
    model = loaded.model
    keep = 0
    images: dict[int, ImageChunk] = {}
    pictures = [image for m in ask.messages for image in m.images]
    if pictures and not model.vision:
        raise NoVisionError(ask.model, "send the request to a vision model, or without images")
    n_ctx = loaded.seq_ctx  # this request's context: its share of the model's
    if ask.raw is not None:
        limit = 2 * n_ctx
        tokens = list(ask.context)
        if pictures:  # before the text, as Ollama puts them
            texts = [""] * len(pictures) + [ask.raw or "\n"]
            read = tokenize_with_images(
                model, texts, pictures, limit, parse_special=True, n_ctx=n_ctx
            )
            tokens += read.tokens
            images = read.images
        else:
            tokens += tokenize_bounded(model, ask.raw, limit, parse_special=True, n_ctx=n_ctx)
    else:
        messages = list(ask.messages)
        if not any(m.role == "system" for m in messages):
            chosen = ask.system if ask.system is not None else system
            if chosen:
                messages.insert(0, Message("system", chosen))
        if history:
            first_user = 1 if messages and messages[0].role == "system" else 0
            messages = messages[:first_user] + list(history) + messages[first_user:]
        prompt = conversation_prompt(model, loaded.template, messages, tools, n_ctx=n_ctx)
        tokens, images = list(ask.context) + prompt.tokens, prompt.images
        if not ask.context:
            keep = keep_point(model, loaded.template, messages, tokens, tools=tools)
    if not tokens:
        raise UsageError("the prompt is empty", "send some text to answer")
    return _Read(tokens, keep, images)


Receive = Callable[[], Awaitable[Any]]  # an ASGI receive channel


class AnswerResponse(StreamingResponse):
    """A streamed answer that lets its model go however the response ends: even when the
    client left before the first byte, and the body was never read."""

    def __init__(self, answer: Answer, body: AsyncIterator[bytes], media_type: str) -> None:
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

    def __init__(self, receive: Receive, answer: Answer) -> None:
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


async def collect(receive: Receive, answer: Answer) -> tuple[str, Stats]:
    """The whole answer and its statistics (for a request that does not stream)."""
    parts: list[str] = []
    stats: Stats | None = None
    async with cancel_on_disconnect(receive, answer):
        async for event in answer.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                stats = event.stats
    assert stats is not None
    return "".join(parts), stats


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
) -> Embedded:
    """Each text's embedding from ``model`` (computed by its engine, between steps)."""
    import math

    start = time.perf_counter()
    if dimensions is not None and dimensions < 1:
        raise UsageError("'dimensions' must be at least 1")
    runner = await pool.acquire(model, (options or {}).get("num_ctx"))
    load_s = time.perf_counter() - start
    try:
        limit = runner.loaded.seq_ctx

        def tokens_of(text: str) -> list[int]:
            model = runner.loaded.model
            tokens = tokenize_bounded(model, text, 2 * limit, parse_special=False, n_ctx=limit)
            return tokens[:limit] if truncate else tokens

        loop = asyncio.get_running_loop()
        vectors, count = [], 0
        for text in texts:
            tokens = await asyncio.to_thread(tokens_of, text)
            count += len(tokens)
            vector: list[float] = await runner.engine.embed(tokens, loop)
            if dimensions is not None and dimensions < len(vector):
                vector = vector[:dimensions]
                norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                vector = [x / norm for x in vector]
            vectors.append(vector)
    finally:
        pool.release(runner, keep_alive)
    return Embedded(vectors, count, load_s if load_s > 0.05 else 0.0, time.perf_counter() - start)
