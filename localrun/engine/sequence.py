"""One request inside the batching engine: its state machine, and the caller's stream.

A :class:`Sequence` is everything the engine knows about one request, with an explicit
:class:`Status` (as vLLM's requests have one): waiting to be admitted, running in a slot of
the KV cache, paused (its cells dropped for room: it waits at the head of the queue to read
its text again) or finished, by a :class:`~localrun.engine.types.FinishReason`. Its caller
reads its events from a :class:`Stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import queue
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from localrun.backend import ImageChunk, SamplingParams, StepModel, cells, image_counts
from localrun.engine.budget import Spending
from localrun.engine.logprobs import logprobs
from localrun.engine.output import TextOut, timed
from localrun.engine.prompt_cache import MIN_TOKENS as MIN_KEEP
from localrun.engine.speculative import Pace
from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    Job,
    Logprobs,
    PrefillProgress,
    PromptEvaluated,
    Stats,
    TextDelta,
    TokenProb,
)
from localrun.errors import PromptTooLongError, UsageError

# A scored prompt's rows a step (echo): llama.cpp keeps each row's logits, 1 MiB a row for a
# 262,144-token vocabulary, in an output buffer that never shrinks.
SCORED_ROWS = 32


class Status(enum.Enum):
    """Where a request is in the engine."""

    WAITING = "waiting"  # submitted, not admitted yet
    RUNNING = "running"  # in a sequence slot: reading its prompt, or answering
    PAUSED = "paused"  # its cells were dropped for room: it waits to read its text again
    FINISHED = "finished"  # ended (Sequence.reason says why): its stream has its last event


class End(NamedTuple):
    """How an answer ends: why, how many tokens were sampled (0: its answer's length; more
    when an end-of-generation token was sampled last), and whether to send the text held
    back (not at a stop string: there it is dropped)."""

    reason: FinishReason
    sampled: int = 0
    flush: bool = True


@dataclass(eq=False)
class Embedding:
    """A text to embed, and where its answer goes."""

    tokens: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]

    def deliver(self, result: Any) -> None:
        def settle() -> None:
            if self.future.done():
                return  # the caller gave up
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(settle)


class LoopOutbox:
    """A request's events handed from the engine thread to an asyncio event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()

    def put(self, item: Event | BaseException) -> None:
        # A closed loop (the server stopped) has nobody left to read the answer.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


Outbox: TypeAlias = queue.SimpleQueue[Event | BaseException] | LoopOutbox


@dataclass(eq=False)  # one object per request: compared by identity
class Sequence:
    """One request inside the engine: everything about it, in one object."""

    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    stop_at_eog: bool
    outbox: Outbox
    submitted: float = field(default_factory=time.perf_counter)
    status: Status = Status.WAITING
    reason: FinishReason | None = None  # why it finished (ERROR: it failed with an error)
    number: int = 0  # admission order: the newest is paused first
    slot: int | None = None  # the sequence id in the KV cache while it runs
    cached: int = 0  # positions of this sequence in the cache
    pending: list[int] = field(default_factory=list)  # tokens to feed, in order
    generated: list[int] = field(default_factory=list)
    paused_at: list[int] = field(default_factory=list)  # answer tokens when it was paused
    sampler: object | None = None
    grammar: object | None = None  # compiled before admission; the sampler chain takes it
    prefill_started: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    prompt_done: bool = False
    reused: int = 0  # prompt tokens found in the cache, not read again
    speculate: int = 0  # the most tokens to guess and check a step (0: plain decoding)
    k: int = 0  # how many to guess next: grows while guesses are kept, shrinks when not
    drafts: list[int] = field(default_factory=list)  # this step's guesses, being checked
    quiet: int = 0  # steps left without guessing (its guesses were seldom right)
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=8))
    pace: Pace = field(default_factory=Pace)  # its speed with guesses and without
    cache_at: int = 0  # prompt tokens worth keeping on disk (a system prompt, a document)
    special: bool = False  # show control tokens' text (a tool call's markers)
    spending: Spending | None = None  # a thinking budget's count, and what it forces
    logprobs: int | None = None  # each token's log probability, with so many alternatives
    prompt_logprobs: int | None = None  # the prompt's too: every prompt row gives logits
    prompt_probs: list[Logprobs] = field(default_factory=list)  # those, as they are read
    images: dict[int, ImageChunk] = field(default_factory=dict)  # its pictures, by their id
    cache_done: bool = False  # cache_at was reached (and the state saved, if it was not)
    out: TextOut = field(init=False)  # its text: UTF-8 across tokens, held at stop strings
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.pending = list(self.prompt)
        self.out = TextOut(self.stop)
        self.stats.prompt_tokens = len(self.prompt)
        for chunk, n in image_counts(self.prompt, self.images):  # a picture may come twice
            self.stats.images += n
            self.stats.image_tokens += n * chunk.n_tokens

    @classmethod
    def of(
        cls,
        job: Job,
        loop: asyncio.AbstractEventLoop | None,
        *,
        keep_limit: int | None,
        pace: Pace,
    ) -> Sequence:
        """``job`` as the engine holds it: its events handed to ``loop`` (None: to a thread's
        queue), a prefix worth keeping no longer than ``keep_limit`` and never inside a
        picture, guesses only for text."""
        outbox: Outbox = LoopOutbox(loop) if loop is not None else queue.SimpleQueue()
        images = dict(job.images)
        seq = cls(job.prompt, job.sampling, job.max_tokens, job.stop, job.stop_at_eog, outbox,
                  images=images, grammar=job.grammar, special=job.special, pace=pace)  # fmt: skip
        cache_at = min(job.cache_at, keep_limit) if keep_limit is not None else job.cache_at
        cache_at = image_cut(job.prompt, cache_at)
        seq.cache_at = cache_at if MIN_KEEP <= cache_at < len(job.prompt) else 0
        # Guesses come from text (the prompt's, or a draft model's that sees no pictures); a
        # thinking budget forces tokens one at a time, so its sequence does not guess.
        seq.speculate = seq.k = max(0, job.speculate) if not images else 0
        if job.think_budget is not None:
            seq.spending = Spending.of(job.think_budget)
            seq.speculate = seq.k = 0
        seq.logprobs = job.logprobs
        if job.logprobs is not None:
            seq.speculate = seq.k = 0  # each token's logits are its own row's: one a step
        seq.prompt_logprobs = job.prompt_logprobs
        if job.prompt_logprobs is not None:
            seq.cache_at = 0  # read whole, never from a cache: each row's logits are needed
        if job.submitted is not None:
            seq.submitted = job.submitted
        return seq

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def text(self) -> list[int]:
        """Its tokens: the prompt, then the answer so far."""
        return self.prompt + self.generated

    def held(self) -> list[int]:
        """The tokens whose cells its slot holds."""
        return self.text()[: self.cached]

    def chunk(self, budget: int) -> int:
        """How many of its pending tokens it feeds a step that has room for ``budget``."""
        take = min(len(self.pending), budget)
        if self.prompt_logprobs is not None and not self.prompt_done:
            take = min(take, SCORED_ROWS)  # each row's logits are kept: a few rows a step
        if self.images:
            take = min(take, next((i for i, t in enumerate(self.pending) if t < 0), take))
        if self.cache_at and not self.cache_done and self.cached < self.cache_at:
            # A chunk ends where the prefix to keep does, so that its cells can be copied.
            take = min(take, self.cache_at - self.cached)
        return take

    # -- its way out: events, text and figures ----------------------------------------------

    def progress(self) -> None:
        """A chunk of the prompt was read and more follows: say how far reading has got, so
        that a long prompt's seconds of prefill show movement. The last chunk sends none
        (PromptEvaluated follows it), so a prompt read in one step costs nothing here."""
        seconds = time.perf_counter() - self.prefill_started - self.stats.image_encode_s
        total = len(self.prompt) - self.reused
        done = min(max(0, self.cached - self.reused), total)
        self.outbox.put(PrefillProgress(len(self.prompt), done, total, max(0.0, seconds)))

    def take(self, token: int, model: StepModel, seq_ctx: int, row: int = -1) -> End | None:
        """Take ``token``, sampled from ``row``'s logits, into the answer (the text of
        ``model``'s token, and its log probability where asked); how the answer ends with
        it, or None: it goes on (with ``seq_ctx`` cells at the most)."""
        now = time.perf_counter()
        if not self.first_at:
            self._first(now, model)
        self.last_at = now
        if self.max_tokens == 0:  # the prompt read, and no token asked for (as Ollama's)
            return End(FinishReason.LENGTH)
        if self.stop_at_eog and model.is_end(token):
            return End(FinishReason.STOP, sampled=len(self.generated) + 1)
        self.generated.append(token)
        stats = self.stats
        stats.completion_tokens += 1
        text, stopped = self.out.feed(
            model.piece(token, True) if self.special else model.piece(token)
        )
        probs = logprobs(model, row, token, self.logprobs) if self.logprobs is not None else None
        self.outbox.put(TextDelta(text, stats.completion_tokens, now - self.submitted, probs))
        if stopped:
            return End(FinishReason.STOP, flush=False)  # at a stop string
        if self.max_tokens is not None and stats.completion_tokens >= self.max_tokens:
            return End(FinishReason.LENGTH)
        if self.cached >= seq_ctx:
            # Its share of the context is full: the token sampled from the last cell ends it.
            return End(FinishReason.LENGTH)
        self.pending.append(token)
        if self.spending is not None:
            self.spending.took(self.generated)
        return None

    def scores(self, pos: int) -> bool:
        """Whether its row at ``pos`` is a prompt row read for its figures (echo), not one
        to sample from."""
        return self.prompt_logprobs is not None and pos < len(self.prompt) - 1

    def score(self, model: StepModel, row: int, pos: int) -> None:
        """The prompt token after ``pos``: its log probability from ``row``'s logits."""
        assert self.prompt_logprobs is not None
        following = self.prompt[pos + 1]
        self.prompt_probs.append(logprobs(model, row, following, self.prompt_logprobs))

    def _first(self, now: float, model: StepModel) -> None:
        """The first token was sampled at ``now``: the prompt's reading is over."""
        stats = self.stats
        self.prompt_done = True
        stats.prompt_evaluated = len(self.prompt) - self.reused
        # Encoding pictures is the vision encoder's time, counted apart.
        stats.prefill_s = max(0.0, now - self.prefill_started - stats.image_encode_s)
        scored: tuple[Logprobs, ...] = ()
        if self.prompt_logprobs is not None:
            first = TokenProb(self.prompt[0], model.piece(self.prompt[0]), math.nan)
            scored = (Logprobs(first), *self.prompt_probs)
        self.outbox.put(
            PromptEvaluated(len(self.prompt), stats.prompt_evaluated, stats.prefill_s, scored)
        )
        self.first_at = now
        self.outbox.put(FirstToken(now - self.submitted))

    def end(self, end: End) -> None:
        """Send what was held back (unless at a stop string) and the statistics, last."""
        if end.flush:
            tail = self.out.flush()
            if tail:
                at = time.perf_counter() - self.submitted
                self.outbox.put(TextDelta(tail, self.stats.completion_tokens, at))
        stats = self.stats
        stats.finish_reason = end.reason
        timed(stats, start=self.submitted, first=self.first_at, last=self.last_at,
              sampled=end.sampled or len(self.generated), end=time.perf_counter())  # fmt: skip
        self.outbox.put(Finished(stats))

    def digests(self) -> dict[int, str]:
        """The digest of each of its pictures, by its id: the prompt cache's keys hold them
        (an id alone is 31 bits of the digest)."""
        return {token: chunk.digest for token, chunk in self.images.items()}


class Stream:
    """The events of one request, as they come: iterate it (``async for`` when it was
    submitted with an event loop); cancel it from any thread."""

    def __init__(self, inbox: queue.SimpleQueue[Any], seq: Sequence) -> None:
        self._inbox = inbox  # the engine's
        self._seq = seq

    def __iter__(self) -> Iterator[Event]:
        outbox = self._seq.outbox
        assert isinstance(outbox, queue.SimpleQueue), "submitted with a loop: use async for"
        while True:
            item = outbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        outbox = self._seq.outbox
        assert isinstance(outbox, LoopOutbox), "submitted without a loop: use for"
        while True:
            item = await outbox.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return

    @property
    def tokens(self) -> list[int]:
        """The answer's tokens so far (complete once the stream has ended)."""
        return list(self._seq.generated)

    @property
    def paused_at(self) -> list[int]:
        """How many answer tokens there were each time the request was paused for room."""
        return list(self._seq.paused_at)

    @property
    def status(self) -> Status:
        """Where the request is in the engine now."""
        return self._seq.status

    def cancel(self) -> None:
        """Stop the request; its sequence is freed at the next step (its stream then ends)."""
        self._inbox.put(("cancel", self._seq))


def collect(stream: Stream) -> tuple[str, Stats]:
    """Read a stream to its end: the whole text and the statistics."""
    parts: list[str] = []
    stats: Any = None
    for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            stats = event.stats
    return "".join(parts), stats


def check_prompt(prompt: list[int], images: Mapping[int, Any], n_vocab: int, seq_ctx: int) -> None:
    """Refuse a prompt that a model of ``n_vocab`` tokens, with ``seq_ctx`` cells a sequence,
    cannot answer."""
    if max(prompt) >= n_vocab or (min(prompt) < 0 and not set(images) >= _ids(prompt)):
        raise UsageError(
            f"the prompt has token ids outside this model's vocabulary (0-{n_vocab - 1})",
            "send text, or token ids this model gave",
        )
    if prompt[-1] < 0:
        raise UsageError("the prompt ends with an image", "add text after the image")
    if (n := cells(prompt, images)) >= seq_ctx:
        raise PromptTooLongError(
            f"the prompt is {n} tokens but the context holds only {seq_ctx}",
            "shorten the prompt, or raise the context with --ctx",
        )


def image_cut(tokens: list[int], n: int) -> int:
    """``n``, or less so as not to cut an image's run of ids in two: a prefix of ``tokens``
    can be kept, copied or read back only whole pictures at a time."""
    while 0 < n < len(tokens) and tokens[n] < 0 and tokens[n - 1] == tokens[n]:
        n -= 1
    return n


def _ids(tokens: list[int]) -> set[int]:
    return {t for t in tokens if t < 0}
